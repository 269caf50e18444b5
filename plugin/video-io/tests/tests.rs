//! Integration tests of fastvmt-video-io: one binary, topic modules under `suite/`.

mod suite;
