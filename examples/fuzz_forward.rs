//! An in-process mutation loop for the forward's model loading, without libFuzzer: for
//! volume on machines where the coverage-guided `fuzz/` targets run too slowly. Mutates the
//! seed GGUFs (structure-aware with `fuzz/src/lib.rs`'s mutator, or bytes), runs
//! `moeq::forward::check_gguf_bytes` on each under `catch_unwind`, and counts executions,
//! errors, panics and slow runs; panicking inputs are written to OUT_DIR.
//!
//! cargo run --release --example fuzz_forward -- SEED_DIR OUT_DIR EXECUTIONS [SEED]
//!
//! Seeds: `python3 scripts/make_fuzz_seeds.py SEED_DIR` writes the golden GGUFs with a
//! 32-token vocabulary (every layer, tensor type and metadata key kept), a fifth to a half of
//! their bytes. Measured on a 2-core machine shared with other work: 290-340 µs of CPU per
//! execution (10 M executions are some 50 minutes of one free core). A run is deterministic
//! for its SEED: shards with different SEEDs add up. The pool of valid mutants holds at most
//! 4096 inputs of up to 2 MB each and 1 GiB in all.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod moeq_fuzz;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// Largest input kept as a parent (the biggest seed is about 1.1 MB).
const MAX_PARENT: usize = 2 << 20;
/// Most parents kept, and their bytes in all.
const MAX_POOL: usize = 4096;
const MAX_POOL_BYTES: usize = 1 << 30;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, seeds, out, n, ..] = &args[..] else {
        eprintln!("usage: fuzz_forward SEED_DIR OUT_DIR EXECUTIONS [SEED]");
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("a number of executions");
    let mut rng = moeq_fuzz::Rng::new(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1));
    let mut pool: Vec<Vec<u8>> =
        std::fs::read_dir(seeds).expect("seed folder").filter_map(|e| std::fs::read(e.ok()?.path()).ok()).collect();
    let seeds_len = pool.len();
    let mut pool_bytes: usize = pool.iter().map(Vec::len).sum();
    assert!(seeds_len > 0, "no seeds");
    std::fs::create_dir_all(out).expect("output folder");
    std::panic::set_hook(Box::new(|_| {}));
    let pool_1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a thread pool");
    let (mut ok, mut errors, mut panics, mut slow) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    // The whole loop runs on the one-thread pool's own thread: the forward's parallel loops
    // run inline there, with no hand-off to another thread and back per execution.
    pool_1.install(|| {
        for i in 0..n {
            let parent = rng.below(pool.len());
            let base = &pool[parent];
            let input = if rng.below(4) > 0 {
                moeq_fuzz::mutate(base, rng.next()).unwrap_or_else(|| base.clone())
            } else {
                let mut b = base.clone();
                for _ in 0..1 + rng.below(8) {
                    let limit = if rng.below(2) == 0 { 4096 } else { usize::MAX };
                    let at = rng.below(b.len().min(limit));
                    match rng.below(4) {
                        0 => b[at] ^= 1 << rng.below(8),
                        1 => b[at] = *rng.pick(&[0, 1, 0x7f, 0x80, 0xff]),
                        2 => b.truncate(at.max(1)),
                        _ => b[at] = rng.next() as u8,
                    }
                }
                b
            };
            let t = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| moeq::forward::check_gguf_bytes(&input).map(drop)));
            if t.elapsed() > Duration::from_secs(5) {
                slow += 1;
                std::fs::write(format!("{out}/slow-{i}.gguf"), &input).expect("write");
            }
            match result {
                Ok(Ok(())) => {
                    ok += 1;
                    // Valid mutants up to MAX_PARENT bytes become parents (seeds kept; the
                    // pool bounded in entries and bytes: a grown mutant of up to 64 MB as a
                    // parent made every later execution copy it, and the pool reach gigabytes).
                    if input.len() <= MAX_PARENT {
                        if pool.len() < MAX_POOL && pool_bytes + input.len() <= MAX_POOL_BYTES {
                            pool_bytes += input.len();
                            pool.push(input);
                        } else if pool.len() > seeds_len {
                            let slot = seeds_len + rng.below(pool.len() - seeds_len);
                            pool_bytes = pool_bytes - pool[slot].len() + input.len();
                            pool[slot] = input;
                        }
                    }
                }
                Ok(Err(_)) => errors += 1,
                Err(_) => {
                    panics += 1;
                    std::fs::write(format!("{out}/panic-{i}.gguf"), &input).expect("write");
                }
            }
            if (i + 1) % 100_000 == 0 {
                eprintln!(
                    "{} executions in {:.0} s: {ok} ran, {errors} errors, {panics} panics, {slow} slow",
                    i + 1,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    });
    println!(
        "{n} executions in {:.0} s: {ok} ran the forward, {errors} errors, {panics} panics, {slow} slower than 5 s",
        start.elapsed().as_secs_f64()
    );
    if panics + slow > 0 {
        std::process::exit(1);
    }
}
