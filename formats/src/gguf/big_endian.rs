//! Big-endian GGUF files, read as gguf-py reads them and turned into the little-endian file
//! llama.cpp and moeq use.
//!
//! gguf-py detects the byte order from the version (a version whose low 16 bits are zero was
//! written in the other order) and byte-swaps every number of the header and metadata. For
//! tensor data this follows `gguf-py/gguf/scripts/gguf_convert_endian.py`, the tool that
//! converts between the two: F32, F16, BF16 (and the integer and F64 types gguf-py's writer
//! swaps the same way) element by element; Q4_0, Q8_0, Q4_K, Q6_K, TQ2_0 and Q1_0 swap the
//! f16 fields of each block; MXFP4 and NVFP4 hold single bytes only. Other quantized types have no
//! defined big-endian layout and are refused, naming the tensor.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, GgufError, Result};
use crate::gguf::reader::GgufHeader;
use crate::gguf::types::GgmlType;
use crate::gguf::writer::GgufPlan;
use crate::mapped::FileBytes;

/// How one tensor type's data is byte-swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Swap {
    /// Single bytes: nothing to swap.
    None,
    /// Elements of this many bytes.
    Elements(usize),
    /// Blocks of `block` bytes with f16 fields at these offsets.
    Halves { block: usize, at: &'static [usize] },
}

impl Swap {
    fn of(ty: GgmlType) -> Option<Swap> {
        Some(match ty {
            GgmlType::I8 | GgmlType::MXFP4 | GgmlType::NVFP4 => Swap::None,
            GgmlType::F16 | GgmlType::BF16 | GgmlType::I16 => Swap::Elements(2),
            GgmlType::F32 | GgmlType::I32 => Swap::Elements(4),
            GgmlType::F64 | GgmlType::I64 => Swap::Elements(8),
            // gguf_convert_endian.py's byteswap_q4_0 / _q8_0 / _q4_k / _q6_k / _tq2_0 / _q1_0.
            GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q1_0 => {
                Swap::Halves { block: ty.type_size() as usize, at: &[0] }
            }
            GgmlType::Q4_K => Swap::Halves { block: 144, at: &[0, 2] },
            GgmlType::Q6_K => Swap::Halves { block: 210, at: &[208] },
            GgmlType::TQ2_0 => Swap::Halves { block: 66, at: &[64] },
            _ => return None,
        })
    }

    /// Bytes a chunk must be a multiple of.
    fn unit(self) -> usize {
        match self {
            Swap::None => 1,
            Swap::Elements(n) => n,
            Swap::Halves { block, .. } => block,
        }
    }

    fn apply(self, data: &mut [u8]) {
        match self {
            Swap::None => {}
            Swap::Elements(n) => data.chunks_exact_mut(n).for_each(<[u8]>::reverse),
            Swap::Halves { block, at } => {
                for b in data.chunks_exact_mut(block) {
                    for &o in at {
                        b.swap(o, o + 1);
                    }
                }
            }
        }
    }
}

/// Checks that every tensor of a big-endian file has a known byte order.
pub(crate) fn check_types(header: &GgufHeader) -> Result<(), GgufError> {
    match header.tensors.iter().find(|t| Swap::of(t.ggml_type).is_none()) {
        Some(t) => Err(GgufError::BigEndianType { tensor: t.name.clone(), ggml_type: t.ggml_type.to_string() }),
        None => Ok(()),
    }
}

/// The little-endian file with the same header values and tensor values as the big-endian
/// `raw` (parsed as `header`): in memory for bytes already in memory, else in an unnamed
/// temporary file in the system's temporary folder, mapped.
pub(crate) fn little_endian_copy(path: &Path, header: &GgufHeader, raw: &FileBytes) -> Result<FileBytes> {
    check_types(header).map_err(|problem| Error::Gguf { path: path.to_path_buf(), problem })?;
    let layout = GgufPlan::from_header(header).layout().map_err(|m| Error::model(path, m))?;
    let mut head = layout.header;
    if head.len() as u64 != header.data_offset {
        return Err(Error::model(path, "internal error: the re-encoded header differs in length"));
    }
    head[4..8].copy_from_slice(&header.version.to_le_bytes());
    let mut pieces = Pieces::new(header, raw.len());
    match raw {
        FileBytes::Owned(bytes) => {
            let mut out = head;
            out.resize(bytes.len(), 0);
            while let Some((start, end, swap)) = pieces.next() {
                out[start..end].copy_from_slice(&bytes[start..end]);
                swap.apply(&mut out[start..end]);
            }
            Ok(FileBytes::Owned(out))
        }
        FileBytes::Mapped(_) => {
            let dir = std::env::temp_dir();
            let temp = crate::temp::TempFile::create(&dir, std::ffi::OsStr::new("moeq-little-endian.gguf"))
                .map_err(|e| Error::io(&dir, e))?;
            let file: &File = temp.file().map_err(|e| Error::io(&dir, e))?;
            let io = |e| Error::io(&dir, e);
            file.set_len(raw.len() as u64).map_err(io)?;
            file.write_all_at(&head, 0).map_err(io)?;
            let mut buf = Vec::new();
            while let Some((start, end, swap)) = pieces.next() {
                buf.clear();
                buf.extend_from_slice(&raw[start..end]);
                swap.apply(&mut buf);
                file.write_all_at(&buf, start as u64).map_err(io)?;
                raw.release(start, end - start);
            }
            crate::inputs::check_unchanged()?;
            // The map keeps the file alive; a named temporary is removed when `temp` drops.
            FileBytes::map_file(file, path, false)
        }
    }
}

/// The data section in pieces of at most `PIECE` bytes: tensor data with its swap, and the
/// padding between (copied as it is).
struct Pieces {
    regions: Vec<(usize, usize, Swap)>,
    at: usize,
    pos: usize,
}

const PIECE: usize = 8 << 20;

impl Pieces {
    fn new(header: &GgufHeader, file_len: usize) -> Pieces {
        let mut regions = Vec::new();
        let mut pos = header.data_offset as usize;
        for t in &header.tensors {
            let start = (header.data_offset + t.offset) as usize;
            let end = start + t.nbytes as usize;
            if start > pos {
                regions.push((pos, start, Swap::None));
            }
            regions.push((start, end, Swap::of(t.ggml_type).unwrap_or(Swap::None)));
            pos = end;
        }
        if file_len > pos {
            regions.push((pos, file_len, Swap::None));
        }
        let pos = regions.first().map_or(0, |r| r.0);
        Pieces { regions, at: 0, pos }
    }

    fn next(&mut self) -> Option<(usize, usize, Swap)> {
        let &(start, end, swap) = self.regions.get(self.at)?;
        let from = self.pos.max(start);
        let room = (PIECE / swap.unit()).max(1) * swap.unit();
        let to = end.min(from + room);
        if to >= end {
            self.at += 1;
            self.pos = self.regions.get(self.at).map_or(end, |r| r.0);
        } else {
            self.pos = to;
        }
        Some((from, to, swap))
    }
}

#[cfg(test)]
mod tests {
    use super::Swap;
    use crate::gguf::types::GgmlType;

    #[test]
    fn swaps_follow_gguf_convert_endian() {
        let mut f32s = vec![1, 2, 3, 4, 5, 6, 7, 8];
        Swap::of(GgmlType::F32).unwrap().apply(&mut f32s);
        assert_eq!(f32s, [4, 3, 2, 1, 8, 7, 6, 5]);
        let mut q8: Vec<u8> = (0..68).collect();
        Swap::of(GgmlType::Q8_0).unwrap().apply(&mut q8);
        assert_eq!(&q8[..4], &[1, 0, 2, 3]);
        assert_eq!(&q8[34..38], &[35, 34, 36, 37]);
        let mut q4k: Vec<u8> = (0..144).map(|i| i as u8).collect();
        Swap::of(GgmlType::Q4_K).unwrap().apply(&mut q4k);
        assert_eq!(&q4k[..5], &[1, 0, 3, 2, 4]);
        assert_eq!(Swap::of(GgmlType::Q5_K), None);
        assert_eq!(Swap::of(GgmlType::MXFP4), Some(Swap::None));
    }
}
