//! Reading image files and bytes (PNG, JPEG, PGM/PNM) as 8-bit grayscale, the input of the
//! MNIST-style preparation.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::DataError;

/// An 8-bit grayscale image, row-major, `width * height` pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LumaImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl LumaImage {
    /// Panics unless `pixels.len() == width * height`.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Self {
        assert_eq!(
            pixels.len(),
            width * height,
            "{width}x{height} image with {} pixels",
            pixels.len()
        );
        Self {
            width,
            height,
            pixels,
        }
    }
}

/// Reads a PNG, JPEG or PGM/PNM file of any size and colour type as 8-bit grayscale
/// (transparency composited over white, orientation tag applied).
///
/// Errors name the file: [`DataError::Io`] when it cannot be read (not found, no permission),
/// [`DataError::Empty`] for an empty file, and [`DataError::Corrupt`] when it is not an image,
/// an image format other than PNG, JPEG or PNM, or an image that does not decode (truncated,
/// damaged).
pub fn load_image(path: &Path) -> Result<LumaImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, None).map_err(|e| match e {
        DecodeError::Empty => DataError::Empty {
            path: path.to_path_buf(),
        },
        other => DataError::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Why image bytes cannot be decoded (no file name: [`load_image`] adds it; a server answers
/// with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("not an image: the content is not PNG, JPEG or PGM/PNM")]
    NotAnImage,
    #[error("unsupported image format {0}: convert it to PNG, JPEG or PGM")]
    Unsupported(String),
    #[error("cannot decode the {format}: {reason}")]
    Undecodable { format: String, reason: String },
    #[error("the {format} has no pixels ({width}x{height})")]
    NoPixels {
        format: String,
        width: u32,
        height: u32,
    },
    #[error("the {format} is {width}x{height}: at most {max_side} pixels a side are accepted")]
    TooLarge {
        format: String,
        width: u32,
        height: u32,
        max_side: u32,
    },
}

/// Decodes PNG, JPEG or PGM/PNM bytes as [`load_image`] does. With `max_side`, an image wider
/// or taller than that is refused from its header, before any pixel is decoded, so a small file
/// that claims a huge size (a decompression bomb) costs nothing.
pub fn decode_image(bytes: &[u8], max_side: Option<u32>) -> Result<LumaImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    // The content decides the format, not the name: a text file called x.png is not a PNG.
    let format = image::guess_format(bytes).map_err(|_| DecodeError::NotAnImage)?;
    let name = format_name(format);
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Pnm
    ) {
        return Err(DecodeError::Unsupported(name));
    }
    let cannot_decode = |e: image::ImageError| DecodeError::Undecodable {
        format: name.clone(),
        reason: e.to_string(),
    };
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(cannot_decode)?;
    if let Some(max_side) = max_side {
        let (width, height) = decoder.dimensions();
        if width > max_side || height > max_side {
            return Err(DecodeError::TooLarge {
                format: name,
                width,
                height,
                max_side,
            });
        }
    }
    let orientation = decoder.orientation().map_err(cannot_decode)?;
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(cannot_decode)?;
    decoded.apply_orientation(orientation);
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(DecodeError::NoPixels {
            format: name,
            width: decoded.width(),
            height: decoded.height(),
        });
    }
    Ok(to_luma(&decoded))
}

fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Pnm => "PNM".to_string(),
        ImageFormat::Jpeg => "JPEG".to_string(),
        other => other
            .extensions_str()
            .first()
            .map_or_else(|| format!("{other:?}"), |e| e.to_uppercase()),
    }
}

/// Rec. 709 luma of the image composited over white.
fn to_luma(image: &DynamicImage) -> LumaImage {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let pixels = match image {
        DynamicImage::ImageLuma8(buffer) => buffer.as_raw().clone(),
        _ => image
            .to_rgba8()
            .pixels()
            .map(|p| {
                let [r, g, b, a] = p.0;
                let alpha = f32::from(a) / 255.0;
                let over_white = |c: u8| f32::from(c) * alpha + 255.0 * (1.0 - alpha);
                let luma = 0.2126 * over_white(r) + 0.7152 * over_white(g) + 0.0722 * over_white(b);
                luma.round().clamp(0.0, 255.0) as u8
            })
            .collect(),
    };
    LumaImage::new(width, height, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::test_images::{dark_on_white, gray};

    #[test]
    fn other_formats_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gif = dir.path().join("anim.gif");
        std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
        let msg = load_image(&gif).unwrap_err().to_string();
        assert!(
            msg.contains("anim.gif") && msg.contains("unsupported image format GIF"),
            "{msg}"
        );
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let err = load_image(&empty).unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
        assert!(err.to_string().contains("empty.jpg"));
    }

    #[test]
    fn bytes_decode_like_files_and_oversized_images_are_refused_from_the_header() {
        let mut png = Vec::new();
        gray(100, 60, dark_on_white(100, 60))
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let image = decode_image(&png, Some(100)).unwrap();
        assert_eq!((image.width, image.height), (100, 60));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.png");
        std::fs::write(&path, &png).unwrap();
        assert_eq!(load_image(&path).unwrap(), image);
        assert_eq!(
            decode_image(&png, Some(99)).unwrap_err(),
            DecodeError::TooLarge {
                format: "PNG".into(),
                width: 100,
                height: 60,
                max_side: 99
            }
        );
        // A PGM header claiming 100000x100000 pixels with no pixel data: refused from the
        // header, without trying to allocate ten gigabytes.
        let bomb = b"P5 100000 100000 255\n";
        assert!(matches!(
            decode_image(bomb, Some(4096)),
            Err(DecodeError::TooLarge { width: 100000, .. })
        ));
        assert_eq!(decode_image(b"", None), Err(DecodeError::Empty));
        assert_eq!(decode_image(b"{}", None), Err(DecodeError::NotAnImage));
    }
}
