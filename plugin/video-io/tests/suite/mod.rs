mod errors;
mod movie;
mod roundtrip;
mod save;
mod util;
