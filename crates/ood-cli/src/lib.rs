//! ood-cli
