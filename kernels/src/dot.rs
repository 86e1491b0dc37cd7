//! Dot products for the forward pass: one weight row against several activation rows, so
//! the weight row is loaded once for all of them. AVX2 + FMA when the CPU has them; a tile of
//! weight rows against many tokens ([`dot_tile`]) with AVX-512 when the CPU has that too.
//!
//! Every SIMD dot product of `n` values is computed the same way, whatever the block shape or
//! backend: eight lanes, lane `j` the fused multiply-adds of `i = j, j + 8, …` below
//! `n − n % 8` in order, then the lanes summed pairwise (`hsum`), then the remaining products
//! in order. So [`dot_rows`], [`dot_block`] and [`dot_tile`] give the same bits for the same
//! row and token on a CPU with AVX2 + FMA; without them all three use [`scalar_dot_rows`].

/// `out[k] = Σ_i row[i] · xs[k · n + i]` for `n = row.len()` and every row `k` of `xs`.
pub fn dot_rows(row: &[f32], xs: &[f32], out: &mut [f32]) {
    assert_eq!(xs.len(), row.len() * out.len(), "dot_rows: xs must hold out.len() rows of row.len() values");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were just detected; the lengths were checked above.
        return unsafe { avx2::dot_rows(row, xs, out) };
    }
    scalar_dot_rows(row, xs, out);
}

/// `out[r · m + k] = Σ_i rows[r · n + i] · xs[k · n + i]` for the `rows.len() / n` weight rows
/// and the `m = xs.len() / n` activation rows: a small block of a matrix product, computed so
/// that each loaded value is used several times.
pub fn dot_block(rows: &[f32], xs: &[f32], n: usize, out: &mut [f32]) {
    let (r, m) = (rows.len() / n.max(1), xs.len() / n.max(1));
    assert_eq!(out.len(), r * m, "dot_block: out must hold one value per row and activation");
    #[cfg(target_arch = "x86_64")]
    if m == 4 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        if r == 3 {
            // SAFETY: AVX2 and FMA were just detected; three rows and four activations of n values.
            return unsafe { avx2::dot_3x4(rows, xs, n, out) };
        }
        if r == 4 {
            // SAFETY: as above, four rows.
            return unsafe { avx2::dot_4x4(rows, xs, n, out) };
        }
    }
    for (row, o) in rows.chunks_exact(n.max(1)).zip(out.chunks_exact_mut(m.max(1))) {
        dot_rows(row, xs, o);
    }
}

/// Which code computes [`dot_tile`]. AVX-512 and AVX2 give the same bits (the same lanes and
/// order, two products per 512-bit register); scalar gives [`scalar_dot_rows`]'s (plain
/// multiply and add, no FMA), used only where the CPU lacks AVX2 or FMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileBackend {
    /// [`scalar_dot_rows`] row by row.
    Scalar,
    /// Three rows by four tokens at a time in 256-bit registers, [`dot_block`]'s arithmetic,
    /// the inner dimension in 512-value steps.
    Avx2,
    /// Four rows by twelve tokens at a time, each 512-bit register holding two tokens' eight
    /// lanes (AVX-512 F + DQ, besides AVX2 and FMA).
    Avx512,
}

impl TileBackend {
    /// `scalar`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            TileBackend::Scalar => "scalar",
            TileBackend::Avx2 => "avx2",
            TileBackend::Avx512 => "avx512",
        }
    }

    /// The backends this CPU runs, slowest first (scalar always).
    pub fn available() -> Vec<TileBackend> {
        let mut out = vec![TileBackend::Scalar];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            out.push(TileBackend::Avx2);
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
                out.push(TileBackend::Avx512);
            }
        }
        out
    }

    /// The backend [`Tokens::new`] picks: the fastest available, but AVX2 when
    /// `MOEQ_KERNELS` names `avx2` or `scalar` (AVX2 and AVX-512 give the same bits; the
    /// scalar dot products round differently, so a CPU with AVX2 always uses at least AVX2
    /// here, as [`dot_block`] does).
    pub fn active() -> TileBackend {
        static ACTIVE: std::sync::OnceLock<TileBackend> = std::sync::OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let all = TileBackend::available();
            let capped = matches!(std::env::var("MOEQ_KERNELS").as_deref(), Ok("avx2" | "scalar"));
            let best = *all.last().unwrap_or(&TileBackend::Scalar);
            if capped && best == TileBackend::Avx512 { TileBackend::Avx2 } else { best }
        })
    }
}

/// Activation rows (tokens) of `n` values each, laid out for [`dot_tile`]'s backend: the
/// AVX-512 backend reads them in pairs, each run of eight values of one token next to the same
/// run of the next token (the copy is made once here, for all the tiles multiplied with them).
pub struct Tokens<'a> {
    xs: &'a [f32],
    n: usize,
    count: usize,
    backend: TileBackend,
    /// AVX-512: for token pair `p` and run `b < n / 8`, 16 values at `(p · n8 + 8b) · 2`: token
    /// 2p's `8b..8b + 8`, then token 2p + 1's (zeros past the last token). Empty otherwise.
    pairs: Vec<f32>,
}

impl<'a> Tokens<'a> {
    /// The `xs.len() / n` rows of `xs` for the [active](TileBackend::active) backend.
    ///
    /// # Panics
    /// If `xs.len()` is not a multiple of `n` (or `n` is 0 and `xs` is not empty).
    pub fn new(xs: &'a [f32], n: usize) -> Self {
        Self::with_backend(xs, n, TileBackend::active()).expect("the active backend is available")
    }

    /// As [`Tokens::new`] for `backend`; `None` if this CPU cannot run it.
    ///
    /// # Panics
    /// If `xs.len()` is not a multiple of `n` (or `n` is 0 and `xs` is not empty).
    pub fn with_backend(xs: &'a [f32], n: usize, backend: TileBackend) -> Option<Self> {
        let count = xs.len() / n.max(1);
        assert_eq!(xs.len(), count * n, "Tokens: xs must hold whole rows of n values");
        if !TileBackend::available().contains(&backend) {
            return None;
        }
        let mut pairs = Vec::new();
        if backend == TileBackend::Avx512 {
            let n8 = n - n % 8;
            pairs = vec![0.0f32; count.div_ceil(2) * 2 * n8];
            for (k, x) in xs.chunks_exact(n.max(1)).enumerate() {
                let base = (k / 2) * 2 * n8 + (k % 2) * 8;
                for (b, run) in x[..n8].chunks_exact(8).enumerate() {
                    pairs[base + 16 * b..base + 16 * b + 8].copy_from_slice(run);
                }
            }
        }
        Some(Tokens { xs, n, count, backend, pairs })
    }

    /// Number of tokens.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Values per token (`n`).
    pub fn width(&self) -> usize {
        self.n
    }

    /// The backend [`dot_tile`] uses for these tokens.
    pub fn backend(&self) -> TileBackend {
        self.backend
    }
}

/// `out[k · r + q] = Σ_i rows[q · n + i] · x_k[i]` for the `r = rows.len() / n` weight rows
/// and every token `k` of `tokens` (`n = tokens.width()`): a tile of a matrix product, each
/// token's results contiguous. Every value equals [`dot_block`]'s for that row and token (on
/// the scalar backend, [`scalar_dot_rows`]'s), whatever the tile's size.
///
/// # Panics
/// If `rows.len()` is not a multiple of `n` or `out.len() != r · tokens.count()`.
pub fn dot_tile(rows: &[f32], tokens: &Tokens, out: &mut [f32]) {
    let (n, t) = (tokens.n, tokens.count);
    let r = rows.len() / n.max(1);
    assert_eq!(rows.len(), r * n, "dot_tile: rows must hold whole rows of n values");
    assert_eq!(out.len(), r * t, "dot_tile: out must hold one value per row and token");
    if r == 0 || t == 0 {
        return; // (n = 0 means no rows)
    }
    match tokens.backend {
        TileBackend::Scalar => {
            let mut column = vec![0.0f32; t];
            for (q, row) in rows.chunks_exact(n).enumerate() {
                scalar_dot_rows(row, tokens.xs, &mut column);
                for (k, v) in column.iter().enumerate() {
                    out[k * r + q] = *v;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: tokens for this backend exist only after `with_backend` found AVX2 and FMA on
        // this CPU; the lengths of `rows` and `out` were checked above, `xs` holds t · n values.
        TileBackend::Avx2 => unsafe { avx2_tile::tile(rows, tokens.xs, n, out) },
        #[cfg(not(target_arch = "x86_64"))]
        TileBackend::Avx2 => unreachable!("AVX2 is never available off x86-64"),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: tokens for this backend exist only after `with_backend` found AVX-512 F + DQ,
        // AVX2 and FMA on this CPU; `pairs` is laid out for `n` and `t` (built there), and the
        // lengths of `rows` and `out` were checked above.
        TileBackend::Avx512 => unsafe { avx512::tile(rows, tokens.xs, &tokens.pairs, n, out) },
        #[cfg(not(target_arch = "x86_64"))]
        TileBackend::Avx512 => unreachable!("AVX-512 is never available off x86-64"),
    }
}

/// `out[d] += Σ_j w[j] · vs[j · n + d]` for `n = out.len()` and every row `j` of `vs`
/// (`vs.len() == w.len() · n`): a weighted sum of rows, as attention sums its values. Each
/// output adds its terms one by one in the order of `j`, every term a rounded product followed
/// by a rounded addition (no fused multiply-add), so the result has the same bits on every
/// backend and equals the plain loop `for j { for d { out[d] += w[j] * vs[j * n + d] } }`.
pub fn weighted_rows(w: &[f32], vs: &[f32], out: &mut [f32]) {
    assert_eq!(vs.len(), w.len() * out.len(), "weighted_rows: vs must hold w.len() rows of out.len() values");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; the lengths were checked above.
        return unsafe { avx2::weighted_rows(w, vs, out) };
    }
    scalar_weighted_rows(w, vs, out);
}

/// The portable [`weighted_rows`] (the plain loop; the SIMD version gives the same bits).
pub fn scalar_weighted_rows(w: &[f32], vs: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (p, v) in w.iter().zip(vs.chunks_exact(n.max(1))) {
        out.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
    }
}

/// What comparing two tensors needs: Σ(a−b)², Σa², Σb², Σab (f32 partial sums over runs of
/// 256 values, gathered in f64), the largest |a − b|, and how many values differ in their bits
/// (+0 and −0 differ: a forward pass can tell them apart).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompareSums {
    /// Σ(a − b)².
    pub diff2: f64,
    /// Σa².
    pub a2: f64,
    /// Σb².
    pub b2: f64,
    /// Σab.
    pub ab: f64,
    /// max |a − b|.
    pub max_abs: f32,
    /// Number of positions whose bits differ.
    pub unequal: u64,
}

/// [`CompareSums`] of two equally long slices of finite values.
pub fn compare(a: &[f32], b: &[f32]) -> CompareSums {
    assert_eq!(a.len(), b.len(), "compare: lengths differ");
    let mut out = CompareSums::default();
    for (a, b) in a.chunks(256).zip(b.chunks(256)) {
        #[cfg(target_arch = "x86_64")]
        if a.len() == 256 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were just detected; both chunks hold 256 values.
            unsafe { avx2::compare_256(a, b, &mut out) };
            continue;
        }
        let (mut d2, mut a2, mut b2, mut ab, mut max) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for (&x, &y) in a.iter().zip(b) {
            let d = x - y;
            d2 += d * d;
            a2 += x * x;
            b2 += y * y;
            ab += x * y;
            max = max.max(d.abs());
            out.unequal += u64::from(x.to_bits() != y.to_bits());
        }
        out.diff2 += d2 as f64;
        out.a2 += a2 as f64;
        out.b2 += b2 as f64;
        out.ab += ab as f64;
        out.max_abs = out.max_abs.max(max);
    }
    out
}

/// The portable version: eight partial sums per dot product.
pub fn scalar_dot_rows(row: &[f32], xs: &[f32], out: &mut [f32]) {
    let n = row.len();
    for (o, x) in out.iter_mut().zip(xs.chunks_exact(n.max(1))) {
        let mut acc = [0.0f32; 8];
        let (cx, cr) = (x.chunks_exact(8), row.chunks_exact(8));
        let tail: f32 = cx.remainder().iter().zip(cr.remainder()).map(|(a, b)| a * b).sum();
        for (a, b) in cx.zip(cr) {
            for k in 0..8 {
                acc[k] += a[k] * b[k];
            }
        }
        *o = acc.iter().sum::<f32>() + tail;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2_tile;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::compare`] of 256 values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn compare_256(a: &[f32], b: &[f32], out: &mut super::CompareSums) {
        let (mut d2, mut a2, mut b2, mut ab, mut max) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let mut unequal = 0u32;
        for i in (0..256).step_by(8) {
            // SAFETY: the caller passes 256 values in each slice; i + 8 ≤ 256.
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))) };
            let d = _mm256_sub_ps(x, y);
            d2 = _mm256_fmadd_ps(d, d, d2);
            a2 = _mm256_fmadd_ps(x, x, a2);
            b2 = _mm256_fmadd_ps(y, y, b2);
            ab = _mm256_fmadd_ps(x, y, ab);
            max = _mm256_max_ps(max, _mm256_and_ps(d, abs_mask));
            let same = _mm256_cmpeq_epi32(_mm256_castps_si256(x), _mm256_castps_si256(y));
            unequal += 8 - (_mm256_movemask_ps(_mm256_castsi256_ps(same)) as u32).count_ones();
        }
        out.diff2 += hsum(d2) as f64;
        out.a2 += hsum(a2) as f64;
        out.b2 += hsum(b2) as f64;
        out.ab += hsum(ab) as f64;
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max) };
        out.max_abs = lanes.iter().fold(out.max_abs, |m, &v| m.max(v));
        out.unequal += unequal as u64;
    }

    /// The products past the last whole run of eight, `Σ_{i ≥ n8} x[i] · row[i]` in order: what
    /// every SIMD dot product adds to the sum of its lanes.
    pub(super) fn tail(row: &[f32], x: &[f32], n8: usize) -> f32 {
        x[n8..].iter().zip(&row[n8..]).map(|(a, b)| a * b).sum()
    }

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// [`super::dot_block`] for four weight rows and four activation rows: sixteen
    /// accumulators, eight loads per sixteen FMAs.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `rows` and `xs` hold 4 · n values, `out` 16.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_4x4(rows: &[f32], xs: &[f32], n: usize, out: &mut [f32]) {
        let n8 = n - n % 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n8 <= n, and rows and xs hold four runs of n values each.
            unsafe {
                // Explicit loads: closures (array::map) are not inlined into target_feature code.
                let (r, x) = (rows.as_ptr(), xs.as_ptr());
                let w = [
                    _mm256_loadu_ps(r.add(i)),
                    _mm256_loadu_ps(r.add(n + i)),
                    _mm256_loadu_ps(r.add(2 * n + i)),
                    _mm256_loadu_ps(r.add(3 * n + i)),
                ];
                let x = [
                    _mm256_loadu_ps(x.add(i)),
                    _mm256_loadu_ps(x.add(n + i)),
                    _mm256_loadu_ps(x.add(2 * n + i)),
                    _mm256_loadu_ps(x.add(3 * n + i)),
                ];
                for (acc, w) in acc.iter_mut().zip(w) {
                    for (a, x) in acc.iter_mut().zip(x) {
                        *a = _mm256_fmadd_ps(x, w, *a);
                    }
                }
            }
            i += 8;
        }
        for r in 0..4 {
            for k in 0..4 {
                out[r * 4 + k] = hsum(acc[r][k]) + tail(&rows[r * n..(r + 1) * n], &xs[k * n..(k + 1) * n], n8);
            }
        }
    }

    /// [`super::dot_block`] for three weight rows and four activation rows: twelve
    /// accumulators, three weight vectors and one activation vector fill the sixteen
    /// registers, so nothing spills and each loaded vector feeds three or four FMAs. Each
    /// result is computed exactly as [`dot_rows`] computes it.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `rows` holds 3 · n values, `xs` 4 · n, `out` 12.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // k indexes the three accumulator rows and the activations
    pub unsafe fn dot_3x4(rows: &[f32], xs: &[f32], n: usize, out: &mut [f32]) {
        let n8 = n - n % 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 3];
        let mut i = 0;
        while i < n8 {
            // SAFETY: i + 8 <= n8 <= n, and rows and xs hold three and four runs of n values.
            unsafe {
                let (r, x) = (rows.as_ptr(), xs.as_ptr());
                let (w0, w1, w2) =
                    (_mm256_loadu_ps(r.add(i)), _mm256_loadu_ps(r.add(n + i)), _mm256_loadu_ps(r.add(2 * n + i)));
                for k in 0..4 {
                    let x = _mm256_loadu_ps(x.add(k * n + i));
                    acc[0][k] = _mm256_fmadd_ps(x, w0, acc[0][k]);
                    acc[1][k] = _mm256_fmadd_ps(x, w1, acc[1][k]);
                    acc[2][k] = _mm256_fmadd_ps(x, w2, acc[2][k]);
                }
            }
            i += 8;
        }
        for r in 0..3 {
            for k in 0..4 {
                out[r * 4 + k] = hsum(acc[r][k]) + tail(&rows[r * n..(r + 1) * n], &xs[k * n..(k + 1) * n], n8);
            }
        }
    }

    /// [`super::weighted_rows`]: 64 outputs at a time held in eight registers while every row
    /// is added (multiply, then add: the scalar loop's two roundings), the rest one by one.
    ///
    /// # Safety
    /// The CPU must support AVX2; `vs.len() == w.len() * out.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn weighted_rows(w: &[f32], vs: &[f32], out: &mut [f32]) {
        let n = out.len();
        let n64 = n - n % 64;
        let mut d = 0;
        while d < n64 {
            // SAFETY: d + 64 <= n64 <= n = out.len(), and each row j of vs holds n values
            // (checked by the caller), so every load and store is in bounds.
            unsafe {
                let o = out.as_mut_ptr().add(d);
                let mut acc = [_mm256_setzero_ps(); 8];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(o.add(8 * r));
                }
                for (j, &p) in w.iter().enumerate() {
                    let (p, v) = (_mm256_set1_ps(p), vs.as_ptr().add(j * n + d));
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(p, _mm256_loadu_ps(v.add(8 * r))));
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * r), *a);
                }
            }
            d += 64;
        }
        if n64 < n {
            for (p, v) in w.iter().zip(vs.chunks_exact(n)) {
                out[n64..].iter_mut().zip(&v[n64..]).for_each(|(o, v)| *o += p * v);
            }
        }
    }

    /// [`super::dot_rows`] four activation rows at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `xs.len() == row.len() * out.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(row: &[f32], xs: &[f32], out: &mut [f32]) {
        let n = row.len();
        let n8 = n - n % 8;
        let mut k = 0;
        while k < out.len() {
            let m = (out.len() - k).min(4);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < n8 {
                // SAFETY: i + 8 <= n8 <= n = row.len(); each activation row k + j has n values
                // in xs (checked by the caller), so every load is in bounds.
                unsafe {
                    let w = _mm256_loadu_ps(row.as_ptr().add(i));
                    for (j, a) in acc.iter_mut().enumerate().take(m) {
                        let x = _mm256_loadu_ps(xs.as_ptr().add((k + j) * n + i));
                        *a = _mm256_fmadd_ps(x, w, *a);
                    }
                }
                i += 8;
            }
            for (j, a) in acc.iter().enumerate().take(m) {
                out[k + j] = hsum(*a) + tail(row, &xs[(k + j) * n..(k + j + 1) * n], n8);
            }
            k += m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_shape_gives_the_same_bits() {
        let n = 2885;
        let rows: Vec<f32> = (0..n * 4).map(|i| ((i * 29 % 103) as f32 - 51.0) / 40.0).collect();
        let xs: Vec<f32> = (0..n * 4).map(|i| ((i * 61 % 89) as f32 - 44.0) / 20.0).collect();
        for r in [3, 4] {
            let mut block = vec![0.0; r * 4];
            dot_block(&rows[..r * n], &xs, n, &mut block);
            for q in 0..r {
                let mut single = [0.0; 4];
                dot_rows(&rows[q * n..(q + 1) * n], &xs, &mut single);
                assert_eq!(block[q * 4..q * 4 + 4], single, "{r} rows, row {q}");
            }
        }
    }

    /// Values with signed zeros, wide magnitudes and cancellation, so differently ordered
    /// sums would show in the bits.
    fn awkward(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match (i * 7 + seed) % 23 {
                0 => 0.0,
                1 => -0.0,
                2 => ((i * 13 + seed) % 97) as f32 * 1e3,
                _ => (((i * 29 + seed * 31) % 103) as f32 - 51.0) / (1.0 + ((i + seed) % 5) as f32 * 17.0),
            })
            .collect()
    }

    #[test]
    fn every_tile_backend_gives_the_blocks_bits() {
        // Widths around runs of 8, 16 and 64 and across the AVX-512 kernel's 512-value steps;
        // token counts around its 12-token (6-pair) blocks, odd ones leaving half a pair;
        // row counts around its 4-row blocks and AVX2's 3-row blocks.
        let backends = TileBackend::available();
        for n in [1, 7, 9, 17, 63, 65, 130, 520, 1031, 2885] {
            for t in [1, 2, 3, 11, 12, 13, 25] {
                let xs = awkward(t * n, n + t);
                let tokens: Vec<Tokens> =
                    backends.iter().map(|&b| Tokens::with_backend(&xs, n, b).expect("available")).collect();
                for r in [1, 3, 4, 5, 9, 61] {
                    let rows = awkward(r * n, 3 * n + r);
                    // The reference: each row against each token alone.
                    let (mut simd, mut scalar) = (vec![0.0f32; r * t], vec![0.0f32; r * t]);
                    let mut one = [0.0f32];
                    for (q, row) in rows.chunks_exact(n).enumerate() {
                        for (k, x) in xs.chunks_exact(n).enumerate() {
                            dot_block(row, x, n, &mut one);
                            simd[k * r + q] = one[0];
                            scalar_dot_rows(row, x, &mut one);
                            scalar[k * r + q] = one[0];
                        }
                    }
                    for tokens in &tokens {
                        let mut out = vec![f32::NAN; r * t];
                        dot_tile(&rows, tokens, &mut out);
                        let want = if tokens.backend() == TileBackend::Scalar { &scalar } else { &simd };
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&out), bits(want), "{:?}: n {n}, {t} tokens, {r} rows", tokens.backend());
                    }
                }
            }
        }
    }

    #[test]
    fn tile_backends_are_offered_only_with_their_features() {
        let all = TileBackend::available();
        assert_eq!(all[0], TileBackend::Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = avx2 && has!("avx512f") && has!("avx512dq");
            assert_eq!(all.contains(&TileBackend::Avx2), avx2);
            assert_eq!(all.contains(&TileBackend::Avx512), avx512);
            let capped = matches!(std::env::var("MOEQ_KERNELS").as_deref(), Ok("avx2" | "scalar"));
            let want = match (avx2, avx512 && !capped) {
                (_, true) => TileBackend::Avx512,
                (true, false) => TileBackend::Avx2,
                (false, false) => TileBackend::Scalar,
            };
            assert_eq!(TileBackend::active(), want);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(all, [TileBackend::Scalar]);
        let xs = [1.0f32; 16];
        for b in [TileBackend::Scalar, TileBackend::Avx2, TileBackend::Avx512] {
            assert_eq!(Tokens::with_backend(&xs, 8, b).is_some(), all.contains(&b), "{}", b.name());
        }
        assert_eq!(Tokens::new(&xs, 8).backend(), TileBackend::active());
    }

    #[test]
    fn empty_tiles_and_tokens_give_nothing() {
        let tokens = Tokens::new(&[], 5);
        let mut out: [f32; 0] = [];
        dot_tile(&[1.0; 10], &tokens, &mut out);
        let xs = [2.0f32; 10];
        dot_tile(&[], &Tokens::new(&xs, 5), &mut out);
        dot_tile(&[], &Tokens::new(&[], 0), &mut out);
    }

    #[test]
    fn blocks_agree_with_single_dots() {
        let n = 2885;
        let rows: Vec<f32> = (0..n * 4).map(|i| ((i * 29 % 103) as f32 - 51.0) / 40.0).collect();
        let xs: Vec<f32> = (0..n * 4).map(|i| ((i * 61 % 89) as f32 - 44.0) / 20.0).collect();
        let mut block = vec![0.0; 16];
        dot_block(&rows, &xs, n, &mut block);
        for r in 0..4 {
            let mut single = [0.0; 4];
            scalar_dot_rows(&rows[r * n..(r + 1) * n], &xs, &mut single);
            for k in 0..4 {
                let (a, b) = (block[r * 4 + k], single[k]);
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn compare_counts_differing_bits() {
        // 300 values: one SIMD run of 256 and a scalar tail of 44.
        let a: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) / 7.0).collect();
        let mut b = a.clone();
        assert_eq!(compare(&a, &b).unequal, 0);
        let zero = a.iter().position(|&v| v == 0.0).unwrap();
        b[zero] = -0.0; // equal values, different bits
        b[3] += 1.0;
        b[290] = -0.0 - a[290];
        let sums = compare(&a, &b);
        assert_eq!(sums.unequal, 3);
        assert_eq!(sums.max_abs, 2.0 * a[290].abs());
        assert!((sums.diff2 - (1.0 + 4.0 * (a[290] as f64).powi(2))).abs() < 1e-3);
    }

    #[test]
    fn weighted_rows_equal_the_plain_loop() {
        // 64-wide SIMD runs and a scalar tail (n = 150), row counts 0 to 37, signed zeros.
        for (n, m) in [(150, 37), (64, 5), (7, 3), (128, 0), (200, 1)] {
            let w: Vec<f32> = (0..m).map(|j| ((j * 31 % 17) as f32 - 8.0) / 9.0).collect();
            let vs: Vec<f32> = (0..m * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
            let start: Vec<f32> = (0..n).map(|d| if d % 3 == 0 { 0.0 } else { d as f32 / 7.0 }).collect();
            let (mut a, mut b, mut plain) = (start.clone(), start.clone(), start.clone());
            weighted_rows(&w, &vs, &mut a);
            scalar_weighted_rows(&w, &vs, &mut b);
            for j in 0..m {
                for d in 0..n {
                    plain[d] += w[j] * vs[j * n + d];
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&plain), "SIMD, n {n}, rows {m}");
            assert_eq!(bits(&b), bits(&plain), "scalar, n {n}, rows {m}");
        }
    }

    #[test]
    fn simd_and_scalar_agree() {
        let n = 2883;
        let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let xs: Vec<f32> = (0..n * 7).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
        let (mut a, mut b) = (vec![0.0; 7], vec![0.0; 7]);
        dot_rows(&row, &xs, &mut a);
        scalar_dot_rows(&row, &xs, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-3 * y.abs().max(1.0), "{x} vs {y}");
        }
        let exact: Vec<f64> =
            xs.chunks(n).map(|x| x.iter().zip(&row).map(|(a, b)| *a as f64 * *b as f64).sum()).collect();
        for (x, e) in a.iter().zip(&exact) {
            assert!((*x as f64 - e).abs() <= 1e-3 * e.abs().max(1.0));
        }
    }
}
