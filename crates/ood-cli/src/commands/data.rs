use crate::DataArgs;
use anyhow::Result;
use ood_data::source::{resolve_data_root, FASHION_MNIST, MNIST};
use ood_data::{DatasetDir, LabeledImages, Split, SplitConfig, Splits};

/// Loads the MNIST train and test splits from the data root.
pub fn load_mnist(data: &DataArgs) -> Result<(LabeledImages, LabeledImages)> {
    let root = resolve_data_root(data.data_dir.as_deref());
    let dir = DatasetDir::in_root(&root, MNIST)?;
    Ok((dir.load(Split::Train)?, dir.load(Split::Test)?))
}

fn histogram(d: &LabeledImages) -> String {
    d.label_histogram()
        .iter()
        .enumerate()
        .map(|(l, n)| format!("{l}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn info(data: &DataArgs, seed: u64) -> Result<()> {
    let root = resolve_data_root(data.data_dir.as_deref());
    println!("data root: {}", root.display());
    let (train, test) = load_mnist(data)?;
    println!(
        "mnist train: {} images of {}x{}",
        train.len(),
        train.images.rows,
        train.images.cols
    );
    println!("  labels {}", histogram(&train));
    println!("mnist test: {} images", test.len());
    println!("  labels {}", histogram(&test));
    let cfg = SplitConfig {
        seed,
        ..Default::default()
    };
    let s = Splits::new(&train, &test, &cfg)?;
    println!(
        "splits (known {:?}, unknown {:?}, seed {seed}):",
        cfg.classes.known, cfg.classes.unknown
    );
    println!("  known-class training pool {}", s.pool_size);
    println!(
        "  train {}  validation {}",
        s.train.len(),
        s.validation.len()
    );
    println!(
        "  test known {}  test unknown {}",
        s.test_known.len(),
        s.test_unknown.len()
    );
    match DatasetDir::in_root(&root, FASHION_MNIST) {
        Ok(dir) if dir.has_split(Split::Test) => {
            let f = dir.load(Split::Test)?;
            println!("fashion-mnist test: {} images", f.len());
        }
        _ => println!("fashion-mnist: not found under {}", root.display()),
    }
    Ok(())
}

pub fn fetch(data: &DataArgs) -> Result<()> {
    let root = resolve_data_root(data.data_dir.as_deref());
    let dir = ood_data::hub::fetch_mnist(&root)?;
    println!("wrote MNIST to {}", dir.display());
    Ok(())
}
