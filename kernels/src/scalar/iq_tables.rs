//! The search tables the i-quant quantizers look grid points up in, built once (lazily) from
//! the compressed grids exactly as ggml's `iq2xs_init_impl` / `iq3xs_init_impl` build them
//! (ggml/src/ggml-quants.c): each grid point as its per-coordinate positions `2l+1`, a map from
//! a packed code (2 or 3 bits per coordinate) to its grid index, and, for every code that is
//! not on the grid, its neighbour list: all grid points at the `nwant` smallest distinct
//! squared distances, ordered by (distance, index). These lists decide the quantizers' search
//! order, and so their bytes.
//!
//! ggml builds lists for every code below `kmap_size`, including 2-bit codes with a coordinate
//! 3 that its quantizers never form (they clamp to 0..=2); those are left out here, and
//! looking one up yields an empty list.

use std::sync::OnceLock;

use super::iq_grids::{
    KGRID_1BIT_2048, KGRID_2BIT_256, KGRID_2BIT_512, KGRID_2BIT_1024, KGRID_3BIT_256, KGRID_3BIT_512,
};

/// A super-block on which ggml's quantizer would stop the program (a `GGML_ASSERT` fails, or
/// it would read past an array): in practice values so large that their squares overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlAbort;

/// The largest f32 below infinity, ggml's `FLT_MAX`.
pub const FLT_MAX: f32 = f32::MAX;

/// ggml's `GGML_ASSERT(scale >= 0)`: a negative or NaN block scale is an abort.
#[inline]
pub fn check_scale(scale: f32) -> Result<(), GgmlAbort> {
    if scale >= 0.0 { Ok(()) } else { Err(GgmlAbort) }
}

/// Bits of a list key that hold the list's length (the start is above them).
const LEN_BITS: usize = 10;

/// A grid of `N`-coordinate points with its code map and neighbour lists.
pub struct Lattice<const N: usize> {
    /// Grid point `j` as positions `2l+1` (`kgrid_q2xs` / `kgrid_q3xs`).
    pub grid: Vec<[i8; N]>,
    /// The same positions as floats.
    pub grid_f32: Vec<[f32; N]>,
    /// Packed code → grid index (≥ 0), or −(key+1) with its list's key (see [`Lattice::list`]),
    /// or `i32::MIN` for codes the quantizers never form.
    map: Vec<i32>,
    /// The lists' grid indices in ggml's order (`kneighbors_q2xs` / `kneighbors_q3xs` without
    /// the counts), each padded with zeros to a multiple of 8.
    neighbours: Vec<u16>,
    /// The same points' levels `(position − 1) / 2`, by chunks of 8 neighbours: `N` rows of 8
    /// bytes per chunk (for SIMD searches).
    levels: Vec<u8>,
    /// An 8-coordinate 2-bit grid of levels 0..3 only, whose lists carry packed codes (for SIMD
    /// searches that look the terms of several coordinates up together, by their code bits).
    three_levels: bool,
    /// The same points' packed codes `Σ l_i << (bits·i)` (padded as `neighbours`, with copies
    /// of the list's last code; empty for
    /// grids whose codes take more than 30 bits), for SIMD searches that keep their winners'
    /// codes in lanes. The 4-coordinate 3-bit grids hold them as bytes instead,
    /// `Σ (32·l_i) << (8·i)`: byte i is coordinate i's term offset (32 bytes per level) in a
    /// per-lane scan's table, so the scan takes each offset by a byte extract, not a shift and
    /// a mask.
    packed: Vec<u32>,
}

/// A neighbour list.
#[derive(Clone, Copy)]
pub struct List<'a> {
    /// The candidates' grid indices, in ggml's search order.
    pub indices: &'a [u16],
    /// Their levels by chunks of 8 (`N` rows of 8 bytes per chunk; the last chunk padded).
    pub levels: &'a [u8],
    /// The grid's points are 8 coordinates of levels 0..3 only, and `packed` holds every
    /// neighbour's code (see [`Lattice::build`]'s `three_levels`).
    pub three_levels: bool,
    /// Their packed codes `Σ l_i << (bits·i)` (4-coordinate 3-bit grids: `Σ (32·l_i) << (8·i)`),
    /// padded to a multiple of 8 with copies of the last (empty for grids whose codes take more
    /// than 30 bits).
    pub packed: &'a [u32],
}

/// Where a packed code falls.
pub enum Lookup<'a> {
    /// On the grid, at this index.
    OnGrid(u16),
    /// Off the grid: the candidates to search (empty for codes the quantizers never form).
    Near(List<'a>),
}

impl<const N: usize> Lattice<N> {
    /// Builds the tables from a compressed grid (`bits` per coordinate), keeping for off-grid
    /// codes whose coordinates are all at most `max_digit` the points at the `nwant` smallest
    /// distances; `three_levels`: mark an 8-coordinate 2-bit grid of levels 0..3 as such (where
    /// it is one).
    fn build(kgrid: &[u16], bits: u32, kmap_size: usize, nwant: usize, max_digit: usize, three_levels: bool) -> Self {
        let mask = (1usize << bits) - 1;
        let grid: Vec<[i8; N]> = kgrid
            .iter()
            .map(|&g| std::array::from_fn(|i| (2 * ((g as usize >> (bits as usize * i)) & mask) + 1) as i8))
            .collect();
        let mut map = vec![i32::MIN; kmap_size];
        for (j, p) in grid.iter().enumerate() {
            let index: usize =
                p.iter().enumerate().map(|(k, &v)| (((v - 1) / 2) as usize) << (bits as usize * k)).sum();
            map[index] = j as i32;
        }
        let (mut neighbours, mut levels, mut packed) = (Vec::new(), Vec::new(), Vec::new());
        // Packed codes fit a u32 (and, for the SIMD searches, a positive i32).
        let with_packed = bits as usize * N <= 30;
        // Levels 0..3 only (positions up to 5), as the 2-bit grids have.
        let three_levels = three_levels && with_packed && N == 8 && bits == 2 && grid.iter().flatten().all(|&p| p <= 5);
        // The grid by coordinates (columns), for distance passes the compiler vectorizes.
        let columns: [Vec<i16>; N] = std::array::from_fn(|k| grid.iter().map(|p| p[k] as i16).collect());
        let mut dist = vec![0i16; grid.len()];
        let mut near: Vec<(i16, u16)> = Vec::new();
        for (i, slot) in map.iter_mut().enumerate() {
            let digits: [usize; N] = std::array::from_fn(|k| (i >> (bits as usize * k)) & mask);
            if *slot >= 0 || digits.iter().any(|&d| d > max_digit) {
                continue;
            }
            let pos = digits.map(|d| (2 * d + 1) as i16);
            // Squared distances to every grid point (at most N·(2·mask)², so i16 is exact).
            dist.fill(0);
            for (column, &q) in columns.iter().zip(&pos) {
                for (d, &g) in dist.iter_mut().zip(column) {
                    *d += (g - q) * (g - q);
                }
            }
            // The nwant smallest distinct distances (all, if fewer), then every point within
            // the largest of them, in (distance, index) order: ggml's qsort of (d2, j) pairs
            // cut the same way.
            let mut limit = -1i16;
            for _ in 0..nwant {
                let next = dist.iter().fold(i16::MAX, |m, &d| m.min(if d > limit { d } else { i16::MAX }));
                if next == i16::MAX {
                    break;
                }
                limit = next;
            }
            near.clear();
            near.extend(dist.iter().enumerate().filter(|&(_, &d)| d <= limit).map(|(j, &d)| (d, j as u16)));
            near.sort_unstable();
            // The key holds the list's start (a multiple of 8) and length, so that a search
            // finds the list from the map entry alone (no second table to read).
            assert!(neighbours.len() < 1 << 21 && near.len() < 1 << LEN_BITS, "neighbour lists too long");
            *slot = -((neighbours.len() << LEN_BITS | near.len()) as i32 + 1);
            for chunk in near.chunks(8) {
                let mut rows = [[0u8; 8]; N];
                for (lane, &(_, j)) in chunk.iter().enumerate() {
                    neighbours.push(j);
                    if with_packed {
                        let l = grid[j as usize].iter().map(|&p| ((p - 1) / 2) as u32);
                        packed.push(if N == 4 && bits == 3 {
                            l.enumerate().map(|(k, l)| (32 * l) << (8 * k)).sum()
                        } else {
                            l.enumerate().map(|(k, l)| l << (bits as usize * k)).sum()
                        });
                    }
                    for (row, &p) in rows.iter_mut().zip(&grid[j as usize]) {
                        row[lane] = ((p - 1) / 2) as u8;
                    }
                }
                neighbours.resize(neighbours.len().next_multiple_of(8), 0);
                if with_packed {
                    // Padded with copies of the last code: a scan that reads the padding too
                    // meets a neighbour again, whose distance cannot be strictly below the
                    // first minimum it already took part in.
                    let last = packed.last().copied().unwrap_or(0);
                    packed.resize(neighbours.len(), last);
                }
                levels.extend(rows.iter().flatten());
            }
        }
        let grid_f32 = grid.iter().map(|p| p.map(|v| v as f32)).collect();
        Lattice { grid, grid_f32, map, neighbours, levels, three_levels, packed }
    }

    /// The raw code map: grid index (≥ 0), −(key+1), or `i32::MIN`.
    #[inline]
    pub fn map(&self) -> &[i32] {
        &self.map
    }

    /// A list by its key (from a negative map entry `m`: `−(m+1)`): its start in the lists'
    /// arrays, shifted left by 10 bits, and its length.
    #[inline]
    pub fn list(&self, key: usize) -> List<'_> {
        let (start, len) = (key >> LEN_BITS, key & ((1 << LEN_BITS) - 1));
        let chunks = len.div_ceil(8);
        List {
            indices: &self.neighbours[start..start + len],
            levels: &self.levels[start * N..(start + 8 * chunks) * N],
            three_levels: self.three_levels,
            packed: if self.packed.is_empty() { &[] } else { &self.packed[start..start + 8 * chunks] },
        }
    }

    /// Looks up a packed code.
    #[inline]
    pub fn lookup(&self, code: usize) -> Lookup<'_> {
        match self.map.get(code).copied().unwrap_or(i32::MIN) {
            g if g >= 0 => Lookup::OnGrid(g as u16),
            i32::MIN => Lookup::Near(List { indices: &[], levels: &[], three_levels: false, packed: &[] }),
            g => Lookup::Near(self.list((-(g + 1)) as usize)),
        }
    }

    /// The grid index of a packed code, if it is on the grid.
    #[inline]
    pub fn index_of(&self, code: usize) -> Option<u16> {
        match self.lookup(code) {
            Lookup::OnGrid(g) => Some(g),
            Lookup::Near(_) => None,
        }
    }
}

/// ggml's `kmap_size` for the 8-coordinate, 2-bit grids.
const KMAP_2BIT: usize = 43692;
/// ggml's `kmap_size` for the 4-coordinate, 3-bit grids.
const KMAP_3BIT: usize = 4096;

macro_rules! lattice {
    ($(#[$doc:meta])* $name:ident: $n:literal, $kgrid:expr, $bits:expr, $kmap:expr, $nwant:expr, $max_digit:expr, $three:expr) => {
        $(#[$doc])*
        pub fn $name() -> &'static Lattice<$n> {
            static TABLE: OnceLock<Lattice<$n>> = OnceLock::new();
            TABLE.get_or_init(|| Lattice::build(&$kgrid, $bits, $kmap, $nwant, $max_digit, $three))
        }
    };
}

lattice!(
    /// IQ2_XXS: 256 points, 2 nearest distances.
    iq2_xxs: 8, KGRID_2BIT_256, 2, KMAP_2BIT, 2, 2, true
);
lattice!(
    /// IQ2_XS: 512 points, 2 nearest distances.
    iq2_xs: 8, KGRID_2BIT_512, 2, KMAP_2BIT, 2, 2, true
);
lattice!(
    /// IQ2_S: 1024 points, the nearest distance only.
    iq2_s: 8, KGRID_2BIT_1024, 2, KMAP_2BIT, 1, 2, true
);
lattice!(
    /// IQ1_S and IQ1_M (one table in ggml): 2048 points, 3 nearest distances.
    iq1: 8, KGRID_1BIT_2048, 2, KMAP_2BIT, 3, 2, false
);
lattice!(
    /// IQ3_XXS: 256 points of 4 coordinates, 2 nearest distances.
    iq3_xxs: 4, KGRID_3BIT_256, 3, KMAP_3BIT, 2, 7, false
);
lattice!(
    /// IQ3_S: 512 points of 4 coordinates, 3 nearest distances.
    iq3_s: 4, KGRID_3BIT_512, 3, KMAP_3BIT, 3, 7, false
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::iq_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};

    /// The search grids and the dequantization grids are the same points in the same order
    /// (a check on the copied data): level l of a coordinate is `values[l]`.
    #[test]
    fn search_grids_match_dequantization_grids() {
        fn check8(l: &Lattice<8>, g: &[u64], values: &[i8]) {
            assert_eq!(l.grid.len(), g.len());
            for (p, &e) in l.grid.iter().zip(g) {
                let bytes = e.to_le_bytes();
                for k in 0..8 {
                    assert_eq!(values[((p[k] - 1) / 2) as usize], bytes[k] as i8);
                }
            }
        }
        check8(iq2_xxs(), &IQ2XXS_GRID, &[8, 25, 43]);
        check8(iq2_xs(), &IQ2XS_GRID, &[8, 25, 43]);
        check8(iq2_s(), &IQ2S_GRID, &[8, 25, 43]);
        check8(iq1(), &IQ1S_GRID, &[-1, 0, 1]);
        let iq3xxs_values = [4, 12, 20, 28, 36, 44, 52, 62];
        let iq3s_values = [1, 3, 5, 7, 9, 11, 13, 15];
        for (l, g, values) in [(iq3_xxs(), &IQ3XXS_GRID[..], iq3xxs_values), (iq3_s(), &IQ3S_GRID[..], iq3s_values)] {
            assert_eq!(l.grid.len(), g.len());
            for (p, &e) in l.grid.iter().zip(g) {
                let bytes = e.to_le_bytes();
                for k in 0..4 {
                    assert_eq!(values[((p[k] - 1) / 2) as usize], bytes[k] as i32);
                }
            }
        }
    }

    /// Every code the quantizers can form is on the grid or has a non-empty list whose
    /// points are no closer than any point left out.
    /// The grids' lists carry each neighbour's packed code.
    #[test]
    fn lists_carry_packed_codes() {
        fn check<const N: usize>(l: &Lattice<N>, bits: usize) {
            let mut off = 0;
            for code in 0..1usize << (bits * N) {
                if let Lookup::Near(n) = l.lookup(code) {
                    off += 1;
                    assert!(n.packed.len() == n.indices.len().next_multiple_of(8));
                    for (k, &j) in n.indices.iter().enumerate() {
                        let want: u32 = l.grid[j as usize]
                            .iter()
                            .enumerate()
                            .map(|(c, &p)| (((p - 1) / 2) as u32) << (bits * c))
                            .sum();
                        assert_eq!(n.packed[k], want);
                    }
                }
            }
            assert_eq!(off, (1 << (bits * N)) - l.grid.len());
        }
        check(iq2_xxs(), 2);
        check(iq2_xs(), 2);
        check(iq2_s(), 2);
        check(iq1(), 2);
    }

    /// The 3-bit grids' lists carry each neighbour's levels as bytes `32·l_i` (coordinate i in
    /// byte i), padded with the last.
    #[test]
    fn three_bit_lists_carry_packed_codes() {
        for l in [iq3_xxs(), iq3_s()] {
            let mut off = 0;
            for code in 0..4096usize {
                if let Lookup::Near(n) = l.lookup(code) {
                    off += 1;
                    assert!(!n.indices.is_empty() && n.packed.len() == n.indices.len().next_multiple_of(8));
                    for (k, &j) in n.indices.iter().enumerate() {
                        let want: u32 = l.grid[j as usize]
                            .iter()
                            .enumerate()
                            .map(|(c, &p)| (32 * ((p - 1) / 2) as u32) << (8 * c))
                            .sum();
                        assert_eq!(n.packed[k], want);
                    }
                    // The padding repeats the last code (scans of whole chunks rely on it).
                    let last = n.packed[n.indices.len() - 1];
                    assert!(n.packed[n.indices.len()..].iter().all(|&c| c == last));
                }
            }
            assert_eq!(off, 4096 - l.grid.len());
        }
    }

    #[test]
    fn every_reachable_code_has_candidates() {
        let l = iq2_xs();
        let mut off = 0;
        for code in 0..6561usize {
            let packed: usize = (0..8).map(|k| ((code / 3usize.pow(k)) % 3) << (2 * k)).sum();
            match l.lookup(packed) {
                Lookup::OnGrid(g) => assert_eq!(l.index_of(packed), Some(g)),
                Lookup::Near(n) => {
                    off += 1;
                    assert!(!n.indices.is_empty());
                    assert!(n.indices.windows(2).all(|w| w[0] != w[1]));
                    for (k, &j) in n.indices.iter().enumerate() {
                        let mut levels = [0u8; 8];
                        for (c, level) in levels.iter_mut().enumerate() {
                            *level = n.levels[(k / 8) * 64 + c * 8 + k % 8];
                            assert_eq!(2 * *level as i8 + 1, l.grid[j as usize][c]);
                        }
                        assert!(n.three_levels && levels.iter().all(|&l| l < 3));
                    }
                }
            }
        }
        assert_eq!(off, 6561 - 512);
        assert!(matches!(l.lookup(3), Lookup::Near(n) if n.indices.is_empty()));
        assert!(matches!(l.lookup(1 << 20), Lookup::Near(n) if n.indices.is_empty()));
    }
}
