//! Seeded mutation fuzzing of every parser, on stable Rust (the libFuzzer targets in `fuzz/`
//! need `RUSTC_BOOTSTRAP=1`; this harness needs nothing). Valid seed inputs are mutated
//! (bit flips, interesting integers, truncation, deletion, duplication, splicing, and
//! structure-aware edits that keep a checkpoint's checksum valid) and fed to the parsers.
//! A finding is a panic, or an allocation far larger than the input (a header's claim
//! believed): the input is saved under `target/fuzz-findings/` and the test fails.
//!
//! A short run is part of `cargo test`; the long run:
//! `DIFFFLOW_FUZZ_SECS=120 cargo test -p diffflow --test fuzz -- --ignored --nocapture`
//! (seconds per target; `DIFFFLOW_FUZZ_SEED` changes the seed).

use diffflow::checkpoint::{self, TensorFile};
use diffflow::config::{Preset, RunConfig};
use diffflow::data::{idx, tabular};
use diffflow::nn::MlpConfig;
use diffflow::rng::Rng;
use diffflow::sde::StepsSchedule;
use diffflow::train::{parse_run_bytes, Silent, TrainData, Trainer, MODEL_FILE};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, Instant};

/// The system allocator, recording the largest single request of the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A format-aware mutation (None when it does not apply to the input).
type Mutator = fn(&[u8], &mut Rng) -> Option<Vec<u8>>;

/// A parser under test and its seed inputs.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    /// Parses the input; true when it was accepted (accepted mutants join the corpus).
    run: fn(&[u8]) -> bool,
    /// Extra, format-aware mutation (None: byte mutations only).
    smart: Option<Mutator>,
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut tiny = tiny_config();
    tiny.train.iters = 2;
    [
        RunConfig::preset(Preset::Quick, "rings"),
        RunConfig::preset(Preset::Paper2d, "olympic"),
        tiny,
    ]
    .iter()
    .map(|c| c.to_toml().unwrap().into_bytes())
    .collect()
}

fn tiny_config() -> RunConfig {
    let mut c = RunConfig::preset(Preset::Quick, "olympic");
    c.data.train_size = 200;
    c.data.test_size = 20;
    c.model.net = MlpConfig {
        width: 6,
        depth: 1,
        fourier: 3,
        ..MlpConfig::small()
    };
    c.train.iters = 2;
    c.train.batch = 8;
    c.train.steps = StepsSchedule::constant(2);
    c.train.threads = 1;
    c
}

fn checkpoint_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    let data = TrainData::toy(&cfg.data, cfg.train.seed).unwrap();
    Trainer::new(cfg, data)
        .unwrap()
        .run(Some(dir.path()), &mut Silent, None)
        .unwrap();
    std::fs::read(dir.path().join(MODEL_FILE)).unwrap()
}

fn idx_seeds() -> Vec<Vec<u8>> {
    let mut images = vec![0, 0, 8, 3];
    for d in [3u32, 2, 2] {
        images.extend(d.to_be_bytes());
    }
    images.extend(0u8..12);
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(3u32.to_be_bytes());
    labels.extend([1, 7, 9]);
    vec![images, labels]
}

fn csv_seeds() -> Vec<Vec<u8>> {
    vec![
        b"# a comment\nx,y,label\n0.5,-1e-3,1\n2,3.25,0\n\n-7,1e10,1\n".to_vec(),
        b"1;2;3\r\n4;5;6\r\n".to_vec(),
        b"\xEF\xBB\xBF\"a b\"\t\"c\"\n1\t2\n  3\t4\n".to_vec(),
        b"1 2  3\n4\t5 6\n".to_vec(),
    ]
}

fn npy_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for (rows, cols) in [(3usize, 2usize), (1, 5)] {
        let p = dir.path().join("t.npy");
        let data: Vec<f64> = (0..rows * cols).map(|i| i as f64 * 0.5 - 1.0).collect();
        tabular::save_npy(&p, &data, rows, cols).unwrap();
        seeds.push(std::fs::read(&p).unwrap());
    }
    // Version 2.0 header, float32, Fortran order (written by hand).
    let mut h = b"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }".to_vec();
    while (12 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend((h.len() as u32).to_le_bytes());
    v2.extend(h);
    for x in [1f32, 2.0, 3.0, 4.0] {
        v2.extend(x.to_le_bytes());
    }
    seeds.push(v2);
    seeds
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Decompresses, mutates the content, compresses again (so that the parser behind the
/// gzip layer is reached).
fn mutate_inside_gz(b: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut raw).ok()?;
    Some(gz(&mutate_bytes(&raw, &[], rng)))
}

fn targets() -> Vec<Target> {
    let ckpt = checkpoint_seed();
    vec![
        Target {
            name: "csv",
            seeds: csv_seeds(),
            run: |b| {
                let auto = tabular::parse(b, "fuzz.csv", &tabular::LoadOptions::default());
                let opts = tabular::LoadOptions {
                    header: Some(true),
                    columns: Some(vec![1, 0, 1]),
                    ..Default::default()
                };
                let explicit = tabular::parse(b, "fuzz.txt", &opts);
                auto.is_ok() || explicit.is_ok()
            },
            smart: Some(mutate_text),
        },
        Target {
            name: "npy",
            seeds: npy_seeds(),
            run: |b| tabular::parse(b, "fuzz.npy", &tabular::LoadOptions::default()).is_ok(),
            smart: None,
        },
        Target {
            name: "npy_gz",
            seeds: npy_seeds().iter().map(|s| gz(s)).collect(),
            run: |b| tabular::parse(b, "fuzz.npy.gz", &tabular::LoadOptions::default()).is_ok(),
            smart: Some(mutate_inside_gz),
        },
        Target {
            name: "config_toml",
            seeds: config_seeds(),
            run: |b| std::str::from_utf8(b).is_ok_and(|t| RunConfig::from_toml(t).is_ok()),
            smart: Some(mutate_text),
        },
        Target {
            name: "checkpoint",
            seeds: vec![ckpt.clone()],
            run: |b| parse_run_bytes(b).is_ok(),
            smart: Some(mutate_checkpoint),
        },
        Target {
            name: "safetensors",
            seeds: vec![ckpt],
            run: |b| checkpoint::from_bytes(b).is_ok(),
            smart: Some(mutate_checkpoint),
        },
        Target {
            name: "idx",
            seeds: idx_seeds(),
            run: |b| idx::parse_idx(b, "fuzz").is_ok(),
            smart: None,
        },
        Target {
            name: "idx_gz",
            seeds: idx_seeds().iter().map(|s| gz(s)).collect(),
            run: |b| idx::read_idx_from(flate2::read::GzDecoder::new(b), "fuzz").is_ok(),
            smart: Some(mutate_inside_gz),
        },
    ]
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    u64::MAX,
];

/// One to four stacked byte-level mutations of `input`; `others` are splicing partners.
fn mutate_bytes(input: &[u8], others: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = b.len();
        match rng.below(8) {
            0 | 1 if n > 0 => {
                let i = rng.below(8 * n);
                b[i / 8] ^= 1 << (i % 8);
            }
            2 if n > 0 => b[rng.below(n)] = INTERESTING[rng.below(4)] as u8,
            3 if n >= 8 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1usize, 2, 4, 8][rng.below(4)];
                let at = rng.below(n - w + 1);
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let src = if rng.below(2) == 0 {
                    &bytes[..w]
                } else {
                    &bytes[8 - w..]
                };
                b[at..at + w].copy_from_slice(src);
            }
            4 if n > 0 => b.truncate(rng.below(n)),
            5 if n > 0 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(64));
                b.drain(at..at + len);
            }
            6 if n > 0 => {
                let at = rng.below(n);
                let len = 1 + rng.below((n - at).min(64));
                let chunk = b[at..at + len].to_vec();
                let to = rng.below(n + 1);
                b.splice(to..to, chunk);
            }
            7 if !others.is_empty() => {
                let o = &others[rng.below(others.len())];
                let cut = rng.below(b.len() + 1);
                let from = rng.below(o.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&o[from..]);
            }
            _ => b.push(rng.next_u64() as u8),
        }
    }
    b
}

const TOKENS: [&str; 16] = [
    "0",
    "-1",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "18446744073709551616",
    "4294967296",
    "9007199254740993",
    "\"\"",
    "\"0,0@0\"",
    "\"5,1@3\"",
    "true",
    "[]",
    "{}",
    "0.000000000000000000001",
];

/// Text-aware mutation: replace a value (after ` = `, or a comma-separated cell) with an
/// interesting token, delete or duplicate a line.
fn mutate_text(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(input).ok()?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return None;
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(lines.len());
        match rng.below(4) {
            0 | 1 => {
                let tok = TOKENS[rng.below(TOKENS.len())];
                if let Some(eq) = lines[i].find(" = ") {
                    lines[i] = format!("{} = {tok}", &lines[i][..eq]);
                } else {
                    let mut cells: Vec<String> = lines[i].split(',').map(str::to_string).collect();
                    let c = rng.below(cells.len());
                    cells[c] = tok.to_string();
                    lines[i] = cells.join(",");
                }
            }
            2 => {
                lines.remove(i);
                if lines.is_empty() {
                    return Some(Vec::new());
                }
            }
            _ => {
                let l = lines[i].clone();
                lines.insert(rng.below(lines.len() + 1), l);
            }
        }
    }
    Some((lines.join("\n") + "\n").into_bytes())
}

/// Checkpoint-aware mutation that keeps the checksum valid, so that the checks behind it
/// are reached: edit the stored config or state text, or replace a tensor by one of
/// another shape or dtype, or drop one.
fn mutate_checkpoint(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let f = checkpoint::from_bytes(input).ok()?;
    let TensorFile {
        mut tensors,
        mut metadata,
        ..
    } = f;
    match rng.below(4) {
        0 => {
            let cfg = metadata.get("config")?.clone();
            let m = mutate_text(cfg.as_bytes(), rng)?;
            metadata.insert("config".into(), String::from_utf8(m).ok()?);
        }
        1 => {
            let state = metadata.get("state")?.clone();
            let mut m = mutate_bytes(state.as_bytes(), &[], rng);
            if rng.below(2) == 0 {
                // Numbers are the interesting part of the state.
                let s = String::from_utf8_lossy(&m).into_owned();
                let tok = ["0", "1", "4294967296", "1e300", "-1", "99999999999"][rng.below(6)];
                m = s
                    .replacen("\"dim\":2", &format!("\"dim\":{tok}"), 1)
                    .into_bytes();
            }
            metadata.insert("state".into(), String::from_utf8(m).ok()?);
        }
        2 => {
            let names: Vec<String> = tensors.keys().cloned().collect();
            let name = &names[rng.below(names.len())];
            let t = tensors[name].clone();
            let new = match rng.below(3) {
                0 => t.to_dtype(candle_core::DType::F64).ok()?,
                1 => t.flatten_all().ok()?,
                _ => candle_core::Tensor::cat(&[&t, &t], 0).ok()?,
            };
            tensors.insert(name.clone(), new);
        }
        _ => {
            let names: Vec<String> = tensors.keys().cloned().collect();
            tensors.remove(&names[rng.below(names.len())]);
        }
    }
    checkpoint::to_bytes(&tensors, &metadata).ok()
}

/// Allocation allowed for one input: generous (the checkpoint target builds a network),
/// but far below what a believed hostile header would ask for.
fn alloc_limit(input: &[u8]) -> usize {
    (64 << 20) + 64 * input.len()
}

/// Runs `target` on mutated inputs for `budget` (or at least `min_execs` executions).
/// Returns the number of executions and how many inputs the parser accepted.
fn fuzz(target: &Target, seed: u64, budget: Duration, min_execs: usize) -> (usize, usize) {
    let mut rng = Rng::new(seed);
    let mut corpus = target.seeds.clone();
    let t0 = Instant::now();
    let (mut execs, mut accepted) = (0, 0);
    while execs < min_execs || t0.elapsed() < budget {
        let base = corpus[rng.below(corpus.len())].clone();
        let input = match target.smart {
            Some(smart) if rng.below(2) == 0 => {
                smart(&base, &mut rng).unwrap_or_else(|| mutate_bytes(&base, &corpus, &mut rng))
            }
            _ => mutate_bytes(&base, &corpus, &mut rng),
        };
        LARGEST.with(|c| c.set(0));
        let result = std::panic::catch_unwind(|| (target.run)(&input));
        let largest = LARGEST.with(|c| c.get());
        execs += 1;
        let problem = match result {
            Err(_) => Some("panic".to_string()),
            Ok(_) if largest > alloc_limit(&input) => Some(format!(
                "allocation of {largest} bytes for a {}-byte input",
                input.len()
            )),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}-{seed}-{execs}.bin", target.name));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{}: {problem} on input saved to {}",
                target.name,
                path.display()
            );
        }
        // Accepted mutants become bases (valid but different inputs reach deeper than
        // rejected ones); the corpus is bounded and the seeds stay.
        if result.unwrap_or(false) {
            accepted += 1;
            if corpus.len() < 256 {
                corpus.push(input);
            } else {
                let i = target.seeds.len() + rng.below(corpus.len() - target.seeds.len());
                corpus[i] = input;
            }
        }
    }
    (execs, accepted)
}

#[test]
fn harness_reports_panics_and_huge_allocations() {
    let message = |t: Target| {
        let e = std::panic::catch_unwind(|| fuzz(&t, 3, Duration::ZERO, 200)).unwrap_err();
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let m = message(Target {
        name: "selftest_panic",
        seeds: vec![vec![1, 2, 3, 4]],
        run: |b| {
            assert!(b.len() == 4 || b.len() > 1000, "length changed");
            true
        },
        smart: None,
    });
    assert!(m.contains("selftest_panic: panic on input saved to"), "{m}");
    let m = message(Target {
        name: "selftest_alloc",
        seeds: vec![vec![1, 2, 3, 4]],
        // Believes a "header" (the first byte) and reserves 2^(20 + b0) bytes (virtual).
        run: |b| {
            if let Some(&b0) = b.first() {
                let v = Vec::<u8>::with_capacity(1usize << (20 + b0.min(16)));
                std::hint::black_box(v);
            }
            true
        },
        smart: None,
    });
    assert!(m.contains("selftest_alloc: allocation of"), "{m}");
}

#[test]
fn fuzz_every_parser_briefly() {
    for t in targets() {
        let (n, ok) = fuzz(&t, 1, Duration::ZERO, 2000);
        println!("{}: {n} executions ({ok} accepted), no finding", t.name);
        assert!(ok > 0, "{}: no mutant was accepted", t.name);
    }
}

#[test]
#[ignore]
fn fuzz_every_parser_long() {
    let secs: u64 = std::env::var("DIFFFLOW_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("DIFFFLOW_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    for t in targets() {
        let (n, ok) = fuzz(&t, seed, Duration::from_secs(secs), 1);
        println!(
            "{}: {n} executions in {secs} s (seed {seed}; {ok} accepted), no finding",
            t.name
        );
    }
}
