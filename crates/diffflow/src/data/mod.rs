//! Data: built-in 2-D sets, image densities, standardisation.
//!
//! - [`toy`]: the 2-D toy sets of the paper and of FFJORD ([`toy_2d`], [`TOY_DATASETS`]),
//!   all rescaled like the authors' code so that `max |x| = 0.85`;
//! - [`image2d`]: densities from the DiffFlow images (tree, Sierpinski carpets), embedded
//!   in the library;
//! - [`idx`]: MNIST's IDX files (gzipped or not), with hostile-header checks;
//! - [`images`]: image sets (`u8` pixels, levels, shape, labels) from IDX files, MNIST-style
//!   folders and the built-in 8x8 digits ([`ImageSet`], [`ImageDataset`]);
//! - [`image_source`]: an image set as a run's data ([`ImageSource`], `[data.image]`);
//! - [`pixels`]: pixels to `[-1, 1]` with uniform dequantisation as a fixed standardiser, a
//!   run's image splits ([`pixels::prepare`]) and bits per dimension;
//! - [`standardize`]: per-column `(x - mean) / std` with its log-Jacobian ([`Standardizer`]);
//! - [`tabular`]: CSV/TSV/text and NumPy `.npy` files, optionally gzipped ([`tabular::load`]);
//! - [`preprocess`]: drop constant columns, dequantise integer columns, seeded splits;
//! - [`pipeline`]: the whole preprocessing of a run's tables in memory
//!   ([`pipeline::TableSource`]: split, drop constants, dequantise, standardise on the
//!   training split), with the map from table columns to model coordinates ([`columns`]);
//! - [`source`]: a data file as a run's data ([`source::FileSource`]), read into a
//!   `TableSource` and prepared by the same pipeline;
//! - [`train_data`]: a run's data configuration ([`DataConfig`]) and its prepared points
//!   ([`TrainData`], standardised, with the batch draws of training).
//!
//! Every random draw comes from the [`crate::rng::Rng`] passed in, so a data set is a
//! deterministic function of its seed.

pub mod columns;
pub mod idx;
pub mod image2d;
pub mod image_source;
pub mod images;
pub mod pipeline;
pub mod pixels;
pub mod preprocess;
pub mod source;
pub mod standardize;
pub mod tabular;
pub mod toy;
pub mod train_data;

pub use image_source::ImageSource;
pub use images::{ImageDataset, ImageSet, ImageShape};
pub use standardize::Standardizer;
pub use tabular::{LoadOptions, Table};
pub use toy::{toy_2d, toy_components, TOY_DATASETS};
pub use train_data::{shuffle_rows, DataConfig, TrainData};
