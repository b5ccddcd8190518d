pub mod bench;
pub mod data;
pub mod eval;
pub mod inspect;
pub mod predict;
pub mod serve;
pub mod train;
