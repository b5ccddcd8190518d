pub mod data;
pub mod inspect;
pub mod train;
