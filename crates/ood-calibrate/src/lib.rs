//! ood-calibrate
