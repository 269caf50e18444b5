mod fixture;
mod graph_json;
mod sdk;
mod validate;
