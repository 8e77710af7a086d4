//! Image data sets: `u8` pixels with `levels` grey levels (256 for MNIST, 17 for the 8x8
//! digits), shape `C x H x W`, optional class labels; each image is one row `[C*H*W]`
//! (channel-major, then rows, then columns), the layout the DiffFlow code models.
//!
//! Sources: an IDX images file with an optional labels file ([`ImageSet::from_idx`]); a
//! folder holding MNIST or Fashion-MNIST under their standard file names, gzipped or not
//! ([`ImageSet::from_idx_folder`], [`ImageDataset`]); the scikit-learn 8x8 digits embedded
//! in the library ([`ImageSet::digits`]). Preparing a run's data (split, dequantisation,
//! scaling to `[-1, 1]`): [`super::pixels`].

use crate::data::idx::{read_idx, Idx};
use crate::data::tabular::{self, LoadOptions};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Number of classes of the labelled sets here (digits 0..9, Fashion-MNIST's 10 kinds).
pub const CLASSES: u8 = 10;

/// The scikit-learn digits (`assets/tabular/digits.csv.gz`): 1797 rows of 64 pixels 0..16
/// and the class.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../assets/tabular/digits.csv.gz");

/// `C x H x W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// One grey channel of `height x width`.
    pub fn grey(height: usize, width: usize) -> Self {
        ImageShape {
            channels: 1,
            height,
            width,
        }
    }

    /// Pixels per image, `C * H * W`.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Images as rows of pixels, with optional labels. Shapes: `pixels` [n, C*H*W].
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// Pixel values `0..levels`, row-major [n, C*H*W].
    pub pixels: Vec<u8>,
    /// Class of each image, `[n]`, when known.
    pub labels: Option<Vec<u8>>,
    /// Shape of one image.
    pub shape: ImageShape,
    /// Number of grey levels `L`: pixels take the values `0..L` (2 to 256).
    pub levels: u32,
}

impl ImageSet {
    /// Checks and wraps the pieces: `pixels` a whole number (≥ 1) of images of `shape`, every
    /// value below `levels` (2..=256), one label per image when given. `name` (a file or set)
    /// is used in error messages.
    pub fn new(
        pixels: Vec<u8>,
        labels: Option<Vec<u8>>,
        shape: ImageShape,
        levels: u32,
        name: &str,
    ) -> Result<Self> {
        let bad = |msg: String| Err(Error::data(format!("{name}: {msg}")));
        let d = shape.dim();
        if !(2..=256).contains(&levels) {
            return bad(format!("{levels} grey levels (expected 2 to 256)"));
        }
        if d == 0 || pixels.is_empty() || pixels.len() % d != 0 {
            return bad(format!(
                "{} pixel values are not a whole, non-zero number of {shape} images",
                pixels.len()
            ));
        }
        let n = pixels.len() / d;
        if let Some(i) = pixels.iter().position(|&p| u32::from(p) >= levels) {
            return bad(format!(
                "pixel value {} in image {}, pixel {} is not below the {levels} levels",
                pixels[i],
                i / d,
                i % d
            ));
        }
        if let Some(l) = &labels {
            if l.len() != n {
                return bad(format!("{} labels for {n} images", l.len()));
            }
        }
        Ok(ImageSet {
            pixels,
            labels,
            shape,
            levels,
        })
    }

    /// An IDX images file `[n, rows, cols]` (256 levels, one channel) and optionally its IDX
    /// labels file `[n]`, values below `classes`; either may be gzipped. Every error is one
    /// line naming the file: truncated, wrong magic or element type, not 3-D images or 1-D
    /// labels, a label count that differs from the image count, a label out of range.
    pub fn from_idx(images: &Path, labels: Option<&Path>, classes: u8) -> Result<Self> {
        let im = read_idx(images)?;
        let [n, rows, cols] = im.dims[..] else {
            return Err(Error::data(format!(
                "{}: images need 3 dimensions [n, rows, cols], got {:?}",
                images.display(),
                im.dims
            )));
        };
        let labels = match labels {
            Some(path) => Some(read_labels(path, n, images, classes)?),
            None => None,
        };
        let name = images.display().to_string();
        Self::new(im.data, labels, ImageShape::grey(rows, cols), 256, &name)
    }

    /// The `split` of an MNIST-style folder: `train-images-idx3-ubyte` and
    /// `train-labels-idx1-ubyte` (or `t10k-…` for the test split), each with or without
    /// `.gz` (the plain file wins when both exist), 10 classes.
    pub fn from_idx_folder(dir: &Path, split: Split) -> Result<Self> {
        let prefix = split.file_prefix();
        let images = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        Self::from_idx(&images, Some(&labels), CLASSES)
    }

    /// The scikit-learn 8x8 digits embedded in the library: 1797 images, 17 levels (0..16),
    /// labels 0..9 (UCI "Optical Recognition of Handwritten Digits"; see
    /// `assets/tabular/README-sklearn_toy.md`).
    pub fn digits() -> Result<Self> {
        let name = "digits.csv.gz (built in)";
        let opts = LoadOptions {
            header: Some(false),
            ..LoadOptions::default()
        };
        let t = tabular::parse(DIGITS_CSV_GZ, "digits.csv.gz", &opts)?;
        let shape = ImageShape::grey(8, 8);
        let d = shape.dim();
        if t.cols != d + 1 {
            return Err(Error::data(format!(
                "{name}: {} columns, expected {} (64 pixels and the class)",
                t.cols,
                d + 1
            )));
        }
        let as_u8 = |v: f64, max: f64, what: &str, r: usize| -> Result<u8> {
            if v.fract() == 0.0 && (0.0..=max).contains(&v) {
                Ok(v as u8)
            } else {
                Err(Error::data(format!(
                    "{name}: row {r}: {what} {v} is not an integer in 0..={max}"
                )))
            }
        };
        let mut pixels = Vec::with_capacity(t.rows * d);
        let mut labels = Vec::with_capacity(t.rows);
        for r in 0..t.rows {
            let row = t.row(r);
            for &v in &row[..d] {
                pixels.push(as_u8(v, 16.0, "pixel", r)?);
            }
            labels.push(as_u8(row[d], f64::from(CLASSES - 1), "class", r)?);
        }
        Self::new(pixels, Some(labels), shape, 17, name)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.dim()
    }

    /// Whether there is no image (never, for a set built by [`ImageSet::new`]).
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Pixels per image.
    pub fn dim(&self) -> usize {
        self.shape.dim()
    }

    /// Image `i`, `[C*H*W]`. Panics if `i >= len()` (an index bug, not bad input).
    pub fn image(&self, i: usize) -> &[u8] {
        let d = self.dim();
        &self.pixels[i * d..(i + 1) * d]
    }

    /// The images at `indices`, in that order (repeats allowed), with their labels.
    /// Panics on an index `>= len()` (an index bug, not bad input).
    pub fn take_rows(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.dim());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            shape: self.shape,
            levels: self.levels,
        }
    }
}

/// The labels file `path` for the `n` images of `images`: 1-D, `n` values below `classes`.
fn read_labels(path: &Path, n: usize, images: &Path, classes: u8) -> Result<Vec<u8>> {
    let Idx { dims, data } = read_idx(path)?;
    let bad = |msg: String| Err(Error::data(format!("{}: {msg}", path.display())));
    if dims.len() != 1 {
        return bad(format!("labels need 1 dimension [n], got {dims:?}"));
    }
    if dims[0] != n {
        return bad(format!(
            "{} labels for the {n} images of {}",
            dims[0],
            images.display()
        ));
    }
    if let Some(i) = data.iter().position(|&l| l >= classes) {
        return bad(format!(
            "label {} at index {i} is not below {classes}",
            data[i]
        ));
    }
    Ok(data)
}

/// `dir/name`, else `dir/name.gz`, else a one-line error naming both.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if plain.is_file() {
        Ok(plain)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(Error::data(format!(
            "{}: neither {name} nor {name}.gz is there (an MNIST-style folder with the \
             standard file names is expected)",
            dir.display()
        )))
    }
}

/// Which file pair of an MNIST-style folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `train-*` (60,000 images for MNIST).
    Train,
    /// `t10k-*` (10,000 images).
    Test,
}

impl Split {
    /// File name prefix: `train` or `t10k`.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The image sets known by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageDataset {
    /// MNIST from a folder (`--data-dir`): 28x28, 256 levels, train and test files.
    Mnist,
    /// Fashion-MNIST from a folder, same layout and file names as MNIST.
    FashionMnist,
    /// The 8x8 digits built into the library: 17 levels, one pool (no test file).
    /// `digits-images` (the tabular `digits` is the same data as a 65-column file).
    #[serde(rename = "digits-images", alias = "digits")]
    Digits,
}

impl ImageDataset {
    /// Every set, in a fixed order.
    pub const ALL: [ImageDataset; 3] = [
        ImageDataset::Mnist,
        ImageDataset::FashionMnist,
        ImageDataset::Digits,
    ];

    /// The name used in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ImageDataset::Mnist => "mnist",
            ImageDataset::FashionMnist => "fashion-mnist",
            ImageDataset::Digits => "digits-images",
        }
    }

    /// The shape of its images: 1x28x28, or 1x8x8 for the digits.
    pub fn shape(self) -> ImageShape {
        match self {
            ImageDataset::Digits => ImageShape::grey(8, 8),
            _ => ImageShape::grey(28, 28),
        }
    }

    /// Its grey levels `L`: 256, or 17 for the digits.
    pub fn levels(self) -> u32 {
        match self {
            ImageDataset::Digits => 17,
            _ => 256,
        }
    }

    /// Whether the set is read from a folder (and has its own test file).
    pub fn needs_dir(self) -> bool {
        !matches!(self, ImageDataset::Digits)
    }

    /// The training pool and, for the folder sets, the test file's images. `dir` is
    /// required for the folder sets and refused for the built-in one.
    pub fn load(self, dir: Option<&Path>) -> Result<(ImageSet, Option<ImageSet>)> {
        match (self.needs_dir(), dir) {
            (true, Some(dir)) => Ok((
                ImageSet::from_idx_folder(dir, Split::Train)?,
                Some(ImageSet::from_idx_folder(dir, Split::Test)?),
            )),
            (true, None) => Err(Error::config(format!(
                "image set '{}' is read from a folder: give its directory (--data-dir DIR)",
                self.name()
            ))),
            (false, None) => Ok((ImageSet::digits()?, None)),
            (false, Some(dir)) => Err(Error::config(format!(
                "image set '{}' is built in and takes no data directory (got {})",
                self.name(),
                dir.display()
            ))),
        }
    }
}

impl std::fmt::Display for ImageDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ImageDataset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s || (s == "digits" && *d == ImageDataset::Digits))
            .ok_or_else(|| {
                Error::config(format!(
                    "unknown image set '{s}' (expected mnist, fashion-mnist or digits-images)"
                ))
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// IDX bytes of unsigned bytes with `dims`.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Three 2x3 images with pixels 0..18 and labels 7, 1, 9.
    fn write_pair(dir: &Path, prefix: &str, zip: bool) {
        let (im, lb) = (
            idx_bytes(&[3, 2, 3], &(0u8..18).collect::<Vec<_>>()),
            idx_bytes(&[3], &[7, 1, 9]),
        );
        let ext = if zip { ".gz" } else { "" };
        let w = |name: String, b: Vec<u8>| {
            let b = if zip { gz(&b) } else { b };
            std::fs::write(dir.join(format!("{name}{ext}")), b).unwrap();
        };
        w(format!("{prefix}-images-idx3-ubyte"), im);
        w(format!("{prefix}-labels-idx1-ubyte"), lb);
    }

    #[test]
    fn reads_idx_pairs_and_folders_plain_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "train", true);
        write_pair(dir.path(), "t10k", false);
        for split in [Split::Train, Split::Test] {
            let s = ImageSet::from_idx_folder(dir.path(), split).unwrap();
            assert_eq!(
                (s.len(), s.shape, s.levels),
                (3, ImageShape::grey(2, 3), 256)
            );
            assert_eq!(s.image(1), &[6, 7, 8, 9, 10, 11]);
            assert_eq!(s.labels.as_deref(), Some(&[7u8, 1, 9][..]));
        }
        let (pool, test) = ImageDataset::Mnist.load(Some(dir.path())).unwrap();
        assert_eq!((pool.len(), test.unwrap().len()), (3, 3));
        let sub = pool.take_rows(&[2, 0, 2]);
        assert_eq!(sub.labels.as_deref(), Some(&[9u8, 7, 9][..]));
        assert_eq!(sub.image(0), pool.image(2));
        // Images alone.
        let p = dir.path().join("t10k-images-idx3-ubyte");
        let s = ImageSet::from_idx(&p, None, CLASSES).unwrap();
        assert_eq!((s.len(), s.labels), (3, None));
    }

    #[test]
    fn bad_files_are_one_line_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, b: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            p
        };
        let images = put("im", &idx_bytes(&[3, 2, 3], &[0; 18]));
        let err = |imgs: &Path, lbls: Option<&Path>| {
            let e = ImageSet::from_idx(imgs, lbls, CLASSES)
                .unwrap_err()
                .to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let cases: Vec<(PathBuf, Option<PathBuf>, &str)> = vec![
            // Truncated images (one pixel short), gzipped truncated stream.
            (
                put("short", &idx_bytes(&[3, 2, 3], &[0; 17])),
                None,
                "truncated",
            ),
            (
                put("short.gz", &gz(&idx_bytes(&[3, 2, 3], &[0; 18]))[..20]),
                None,
                "short.gz",
            ),
            // Wrong magic, a 2-D "image" file, an absurd header.
            (
                put("magic", &[1, 2, 3, 4, 0, 0, 0, 1, 5]),
                None,
                "not an IDX file",
            ),
            (
                put("flat", &idx_bytes(&[3, 6], &[0; 18])),
                None,
                "need 3 dimensions",
            ),
            (
                put("huge", &idx_bytes(&[u32::MAX, u32::MAX, 2], &[0; 8])),
                None,
                "overflow",
            ),
            // Labels: 2-D, too few, out of range.
            (
                images.clone(),
                Some(put("l2", &idx_bytes(&[3, 1], &[0; 3]))),
                "labels need 1 dimension",
            ),
            (
                images.clone(),
                Some(put("l4", &idx_bytes(&[4], &[0; 4]))),
                "4 labels for the 3 images",
            ),
            (
                images.clone(),
                Some(put("l10", &idx_bytes(&[3], &[0, 10, 0]))),
                "label 10 at index 1 is not below 10",
            ),
        ];
        for (imgs, lbls, want) in cases {
            let e = err(&imgs, lbls.as_deref());
            let named = lbls.as_deref().unwrap_or(&imgs);
            assert!(
                e.contains(&named.display().to_string()),
                "{e} does not name {}",
                named.display()
            );
            assert!(e.contains(want), "{e} lacks '{want}'");
        }
        // A folder without the files, and the wrong kind of directory argument.
        let e = ImageSet::from_idx_folder(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither train-images-idx3-ubyte nor"), "{e}");
        assert!(ImageDataset::Mnist.load(None).is_err());
        assert!(ImageDataset::Digits.load(Some(dir.path())).is_err());
        assert!("cifar".parse::<ImageDataset>().is_err());
    }

    #[test]
    fn new_checks_shape_levels_and_labels() {
        let shape = ImageShape::grey(2, 2);
        let ok = ImageSet::new(vec![0, 1, 2, 16], None, shape, 17, "t").unwrap();
        assert_eq!(ok.len(), 1);
        let e = |r: Result<ImageSet>| r.unwrap_err().to_string();
        assert!(e(ImageSet::new(vec![0, 17, 2, 3], None, shape, 17, "t"))
            .contains("pixel value 17 in image 0, pixel 1"));
        assert!(e(ImageSet::new(vec![0; 5], None, shape, 17, "t")).contains("whole"));
        assert!(e(ImageSet::new(vec![], None, shape, 17, "t")).contains("whole"));
        assert!(e(ImageSet::new(vec![0; 4], None, shape, 1, "t")).contains("1 grey levels"));
        assert!(
            e(ImageSet::new(vec![0; 4], Some(vec![1, 2]), shape, 17, "t"))
                .contains("2 labels for 1 images")
        );
    }

    fn label_counts(s: &ImageSet) -> [usize; 10] {
        let mut counts = [0usize; 10];
        for &l in s.labels.as_ref().unwrap() {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    #[test]
    fn built_in_digits_match_their_readme() {
        let s = ImageSet::digits().unwrap();
        assert_eq!(
            (s.len(), s.shape, s.levels),
            (1797, ImageShape::grey(8, 8), 17)
        );
        let counts = label_counts(&s);
        // Class counts from assets/tabular/README-sklearn_toy.md.
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        assert_eq!(*s.pixels.iter().max().unwrap(), 16);
        // First image of sklearn's digits (a zero): row 0 is 0 0 5 13 9 1 0 0.
        assert_eq!(&s.image(0)[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
        assert_eq!(s.labels.as_ref().unwrap()[0], 0);
        assert_eq!(ImageDataset::Digits.load(None).unwrap().0, s);
    }

    /// The real MNIST files (not in the repository): `DIFFFLOW_MNIST=/path/to/mnist
    /// cargo test -p diffflow --lib images -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn real_mnist() {
        let dir = PathBuf::from(
            std::env::var("DIFFFLOW_MNIST").expect("set DIFFFLOW_MNIST to the MNIST folder"),
        );
        for (split, n) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
            let s = ImageSet::from_idx_folder(&dir, split).unwrap();
            assert_eq!((s.len(), s.shape), (n, ImageShape::grey(28, 28)));
            let mean = s.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / s.pixels.len() as f64;
            let counts = label_counts(&s);
            println!(
                "{split:?}: mean pixel/255 {:.5}, label counts {counts:?}",
                mean / 255.0
            );
            if split == Split::Train {
                // The well-known normalisation constant of MNIST's training set.
                assert!((mean / 255.0 - 0.1307).abs() < 5e-5, "{}", mean / 255.0);
                assert_eq!(counts[1], 6742);
            }
        }
    }
}
