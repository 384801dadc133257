//! File plumbing shared by the formats: atomic writes, JSONL lines, image checks, hashing.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::DataError;

/// Writes `path` atomically: `fill` writes into a temporary file in the same folder, which is
/// flushed, fsynced and renamed over `path`. On error the temporary file is removed and `path`
/// is untouched. Creates the parent folder if needed.
pub fn atomic_write<F>(path: &Path, fill: F) -> Result<(), DataError>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

/// Writes bytes atomically.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    atomic_write(path, |w| w.write_all(bytes))
}

/// Writes one JSON value per line, atomically.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<(), DataError> {
    atomic_write(path, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Calls `each(line_number, text)` for every non-blank line (1-based numbers). A line that is not
/// valid UTF-8 is passed as `Err`.
pub fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, Result<&str, String>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        match std::str::from_utf8(&buf) {
            Ok(s) if s.trim().is_empty() => {}
            Ok(s) => each(n, Ok(s.trim_end_matches(['\n', '\r'])))?,
            Err(e) => each(n, Err(format!("not valid UTF-8: {e}")))?,
        }
    }
}

/// Resolves an image path found inside a data file: relative paths are relative to the data
/// file's folder.
pub fn resolve(data_file: &Path, image: &str) -> PathBuf {
    let p = Path::new(image);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_file.parent().unwrap_or_else(|| Path::new(".")).join(p)
    }
}

/// Checks that an image file exists and that its header decodes; returns (width, height).
pub fn check_image_file(path: &Path) -> Result<(u32, u32), String> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| format!("image {}: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| format!("image {}: {e}", path.display()))?;
    reader
        .into_dimensions()
        .map_err(|e| format!("image {} is unreadable: {e}", path.display()))
}

/// Checks that in-memory image bytes have a decodable header; returns (width, height).
pub fn check_image_bytes(bytes: &[u8]) -> Result<(u32, u32), String> {
    if bytes.is_empty() {
        return Err("image bytes are empty".to_string());
    }
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| format!("image bytes are unreadable: {e}"))
}

/// Lower-case hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| DataError::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// Lower-case hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_atomic_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        atomic_write_bytes(&path, b"old").unwrap();
        let err = atomic_write(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("f.txt") && err.to_string().contains("disk on fire"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        atomic_write_bytes(&dir.path().join("sub/dir/g.txt"), b"new").unwrap();
        assert_eq!(fs::read(dir.path().join("sub/dir/g.txt")).unwrap(), b"new");
    }

    #[test]
    fn lines_are_numbered_from_one_blank_lines_skipped_and_bad_utf8_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        fs::write(&path, b"a\n\n  \nb\r\n\xff\xfe\nc").unwrap();
        let mut seen = Vec::new();
        for_each_line(&path, |n, line| {
            seen.push((n, line.map(str::to_string)));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], (1, Ok("a".to_string())));
        assert_eq!(seen[1], (4, Ok("b".to_string())));
        assert_eq!(seen[2].0, 5);
        assert!(seen[2].1.as_ref().unwrap_err().contains("UTF-8"));
        assert_eq!(seen[3], (6, Ok("c".to_string())));
    }
}
