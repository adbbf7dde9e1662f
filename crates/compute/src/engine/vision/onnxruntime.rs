//! ONNX graphs on ONNX Runtime, its library loaded at run time (nothing is
//! linked at build time; ./setup.sh puts the library from PyPI's
//! `onnxruntime` wheel beside the binary). It runs a graph at any input
//! size from one session, and on these models it is faster than tract
//! (bench/vision.py).
//!
//! A model is trusted as its import into the store trusts it: ONNX Runtime
//! is C++ and reads the file itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, ValueType};

use super::graph::{Dim, Graph, GraphInfo};

/// The library's file name, as the dynamic linker looks it up.
pub const LIBRARY: &str = "libonnxruntime.so";

/// ONNX Runtime, loaded: one per process.
pub struct Library {
    environment: Environment,
    version: String,
}

/// The outcome of the first load: a process keeps the library it loaded.
static LOADED: OnceLock<Result<Arc<Library>, String>> = OnceLock::new();

impl Library {
    /// The first of `candidates` that loads (once per process: later calls
    /// get the first call's outcome); an error lists why each did not.
    pub fn load(candidates: &[PathBuf]) -> Result<Arc<Self>, String> {
        LOADED.get_or_init(|| load_first(candidates)).clone()
    }

    /// A session for the ONNX file at `path`, on `threads` threads.
    pub fn session(&self, path: &Path, threads: usize) -> Result<OrtGraph, String> {
        let text = |e: ort::Error<_>| e.to_string();
        let session = Session::builder(&self.environment)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(text)?
            .with_intra_threads(threads)
            .map_err(text)?
            // Idle threads sleep rather than spin: the cores are shared with
            // the other sessions and llama.cpp, and a spinning pool slowed
            // the next network's calls (bench/vision.py).
            .with_intra_op_spinning(false)
            .map_err(text)?
            .commit_from_file(path)
            .map_err(|e| format!("not an ONNX model ONNX Runtime reads: {e}"))?;
        let input = match session.inputs().first().map(|input| input.dtype()) {
            Some(ValueType::Tensor {
                shape,
                dimension_symbols,
                ..
            }) => shape
                .iter()
                .zip(dimension_symbols.iter())
                .map(|(size, symbol)| Dim {
                    size: usize::try_from(*size).ok(),
                    name: match *size {
                        size if size >= 0 => size.to_string(),
                        _ if symbol.is_empty() => "?".into(),
                        _ => symbol.clone(),
                    },
                })
                .collect(),
            Some(other) => return Err(format!("its input is {other:?}, not a tensor")),
            None => return Err("it has no input".into()),
        };
        let info = GraphInfo {
            metadata: metadata(&session)?,
            input,
            runs_on: format!("onnxruntime {}", self.version),
        };
        Ok(OrtGraph {
            session: Mutex::new(session),
            info,
        })
    }
}

/// The model's `metadata_props`.
fn metadata(session: &Session) -> Result<BTreeMap<String, String>, String> {
    let metadata = session.metadata().map_err(|e| e.to_string())?;
    let keys = metadata.custom_keys().map_err(|e| e.to_string())?;
    Ok(keys
        .into_iter()
        .filter_map(|key| Some((key.clone(), metadata.custom(&key)?)))
        .collect())
}

fn load_first(candidates: &[PathBuf]) -> Result<Arc<Library>, String> {
    let mut failures = Vec::new();
    for path in candidates {
        let loaded = ort::init_from(path)
            .map_err(|e| e.to_string())
            .and_then(|builder| {
                builder
                    .with_name("jetsonmind-vision")
                    .build()
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok(environment) => {
                let version = release(path).unwrap_or_else(|| "(release unknown)".into());
                tracing::info!(library = %path.display(), version, "image models run on ONNX Runtime");
                return Ok(Arc::new(Library {
                    environment,
                    version,
                }));
            }
            Err(why) => failures.push(format!("{}: {why}", path.display())),
        }
    }
    Err(failures.join("; "))
}

/// The library's release (`1.32.0`), as its own `GetVersionString` says.
fn release(path: &Path) -> Option<String> {
    // SAFETY: ort has just loaded the library from `path`, so this opens the
    // same one again (the loader counts references); `OrtGetApiBase` takes
    // nothing and returns a pointer to a static table whose
    // `GetVersionString` returns a static NUL-terminated string.
    unsafe {
        let library = libloading::Library::new(path).ok()?;
        let api_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            library.get(b"OrtGetApiBase").ok()?;
        let base = api_base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).GetVersionString)();
        (!version.is_null()).then(|| {
            std::ffi::CStr::from_ptr(version)
                .to_string_lossy()
                .into_owned()
        })
    }
}

pub struct OrtGraph {
    /// A session runs one call at a time (its run takes it mutably); each
    /// run uses all of the session's threads.
    session: Mutex<Session>,
    info: GraphInfo,
}

impl Graph for OrtGraph {
    fn info(&self) -> &GraphInfo {
        &self.info
    }

    fn run(
        &self,
        planar: Vec<f32>,
        height: u32,
        width: u32,
    ) -> Result<(Vec<usize>, Vec<f32>), String> {
        let shape = [1usize, 3, height as usize, width as usize];
        let input = Tensor::from_array((shape, planar)).map_err(|e| e.to_string())?;
        let mut session = self.session.lock().expect("session lock");
        let outputs = session
            .run(ort::inputs![input])
            .map_err(|e| e.to_string())?;
        let (shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| format!("its first output: {e}"))?;
        let shape = shape
            .iter()
            .map(|d| usize::try_from(*d).unwrap_or(0))
            .collect();
        Ok((shape, values.to_vec()))
    }
}
