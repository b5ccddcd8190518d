//! Reading and writing IDX files (the MNIST file format), gzip-compressed or raw.
//!
//! The format: a 4-byte big-endian magic number (`0x00000803` for an image file of
//! unsigned bytes with three dimensions, `0x00000801` for a label file with one), then one
//! big-endian `u32` per dimension, then the payload. Every check that can fail names the file.

use crate::{DataError, Result};
use std::io::{Read, Write};
use std::path::Path;

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// A stack of grayscale images, row-major, one byte per pixel (0 = background).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub rows: usize,
    pub cols: usize,
    /// `len() * rows * cols` bytes.
    pub pixels: Vec<u8>,
}

impl Images {
    pub fn new(rows: usize, cols: usize, pixels: Vec<u8>) -> Self {
        assert!(rows * cols > 0 && pixels.len().is_multiple_of(rows * cols));
        Self { rows, cols, pixels }
    }

    pub fn len(&self) -> usize {
        self.pixels.len() / self.pixels_per_image()
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// The bytes of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.pixels_per_image();
        &self.pixels[index * n..(index + 1) * n]
    }
}

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("cannot decompress gzip data: {e}"),
            })?;
        if out.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses the header, checks the magic and the payload length, and returns the dimensions
/// and the offset of the payload.
fn parse_header(path: &Path, bytes: &[u8], expected_magic: u32) -> Result<(Vec<usize>, usize)> {
    let dims_count = (expected_magic & 0xff) as usize;
    let header_len = 4 + 4 * dims_count;
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            found: bytes.len(),
        });
    }
    let magic = word(0);
    if magic != expected_magic {
        return Err(DataError::WrongMagic {
            path: path.to_path_buf(),
            expected: expected_magic,
            found: magic,
        });
    }
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = (1..=dims_count).map(|i| word(i) as usize).collect();
    if dims.contains(&0) {
        return Err(DataError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("a dimension is zero: {dims:?}"),
        });
    }
    let payload: usize = dims.iter().product();
    let expected = header_len + payload;
    match bytes.len() {
        n if n < expected => Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: n,
        }),
        n if n > expected => Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            found: n,
        }),
        _ => Ok((dims, header_len)),
    }
}

/// Reads an IDX image file (`0x00000803`), gzip-compressed or raw.
pub fn read_images(path: impl AsRef<Path>) -> Result<Images> {
    let path = path.as_ref();
    let mut bytes = read_maybe_gzip(path)?;
    let (dims, offset) = parse_header(path, &bytes, IMAGES_MAGIC)?;
    bytes.drain(..offset);
    Ok(Images::new(dims[1], dims[2], bytes))
}

/// Reads an IDX label file (`0x00000801`), gzip-compressed or raw.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let mut bytes = read_maybe_gzip(path)?;
    let (_, offset) = parse_header(path, &bytes, LABELS_MAGIC)?;
    bytes.drain(..offset);
    Ok(bytes)
}

fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    crate::atomic::write_atomic(path, contents).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn encode(magic: u32, dims: &[usize], payload: &[u8], gzip: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + payload.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(payload);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&out).expect("writing to a Vec cannot fail");
        enc.finish().expect("writing to a Vec cannot fail")
    } else {
        out
    }
}

/// Writes an IDX image file atomically; gzip-compressed when `path` ends in `.gz`.
pub fn write_images(path: impl AsRef<Path>, images: &Images) -> Result<()> {
    let path = path.as_ref();
    let dims = [images.len(), images.rows, images.cols];
    write_atomic(
        path,
        &encode(IMAGES_MAGIC, &dims, &images.pixels, is_gz(path)),
    )
}

/// Writes an IDX label file atomically; gzip-compressed when `path` ends in `.gz`.
pub fn write_labels(path: impl AsRef<Path>, labels: &[u8]) -> Result<()> {
    let path = path.as_ref();
    write_atomic(
        path,
        &encode(LABELS_MAGIC, &[labels.len()], labels, is_gz(path)),
    )
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Images {
        Images::new(2, 3, (0..24).collect())
    }

    #[test]
    fn round_trips_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a-idx3-ubyte", "a-idx3-ubyte.gz"] {
            let p = dir.path().join(name);
            write_images(&p, &sample()).unwrap();
            assert_eq!(read_images(&p).unwrap(), sample());
        }
        let p = dir.path().join("l.gz");
        write_labels(&p, &[1, 2, 3, 4]).unwrap();
        assert_eq!(read_labels(&p).unwrap(), vec![1, 2, 3, 4]);
        let img = read_images(dir.path().join("a-idx3-ubyte")).unwrap();
        assert_eq!(img.len(), 4);
        assert_eq!(img.image(1), &[6, 7, 8, 9, 10, 11]);
    }

    fn err_of(bytes: &[u8], labels: bool) -> DataError {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad-file");
        std::fs::write(&p, bytes).unwrap();
        let err = if labels {
            read_labels(&p).unwrap_err()
        } else {
            read_images(&p).unwrap_err()
        };
        assert!(err.to_string().contains("bad-file"), "{err}");
        err
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = read_images("/definitely/not/here-idx3-ubyte").unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("/definitely/not/here-idx3-ubyte"));
    }

    #[test]
    fn zero_length_file() {
        assert!(matches!(err_of(&[], false), DataError::Empty { .. }));
    }

    #[test]
    fn wrong_magic() {
        let bytes = encode(LABELS_MAGIC, &[3], &[1, 2, 3], false);
        assert!(matches!(
            err_of(&bytes, false),
            DataError::WrongMagic {
                expected: IMAGES_MAGIC,
                found: LABELS_MAGIC,
                ..
            }
        ));
        let bytes = encode(IMAGES_MAGIC, &[1, 1, 1], &[1], false);
        assert!(matches!(err_of(&bytes, true), DataError::WrongMagic { .. }));
    }

    #[test]
    fn truncated_header_and_payload() {
        let bytes = encode(IMAGES_MAGIC, &[4, 2, 3], &sample().pixels, false);
        assert!(matches!(
            err_of(&bytes[..10], false),
            DataError::Truncated { expected: 16, .. }
        ));
        assert!(matches!(
            err_of(&bytes[..2], false),
            DataError::Truncated { .. }
        ));
        assert!(matches!(
            err_of(&bytes[..bytes.len() - 1], false),
            DataError::Truncated {
                expected: 40,
                found: 39,
                ..
            }
        ));
    }

    #[test]
    fn trailing_garbage() {
        let mut bytes = encode(LABELS_MAGIC, &[3], &[1, 2, 3], false);
        bytes.push(9);
        assert!(matches!(
            err_of(&bytes, true),
            DataError::TrailingBytes { found: 12, .. }
        ));
    }

    #[test]
    fn zero_dimension_and_corrupt_gzip() {
        let bytes = encode(IMAGES_MAGIC, &[0, 28, 28], &[], false);
        assert!(matches!(err_of(&bytes, false), DataError::Corrupt { .. }));
        let mut gz = encode(LABELS_MAGIC, &[3], &[1, 2, 3], true);
        let n = gz.len();
        gz.truncate(n / 2);
        assert!(matches!(err_of(&gz, true), DataError::Corrupt { .. }));
    }
}
