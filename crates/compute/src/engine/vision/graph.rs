//! The seam between the image engines and the libraries that run ONNX
//! graphs: ONNX Runtime where its library is there ([`super::onnxruntime`]),
//! tract otherwise ([`super::tract`]). The engines (classifier, detector,
//! text reader) see only [`Graph`], so both run the same preprocessing and
//! read the same outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::VisionRuntime as RuntimeChoice;

use super::{onnxruntime, tract};

/// One ONNX network, loaded, run on one planar RGB image (3 x height x
/// width floats) at a time, of any size its graph takes.
pub trait Graph: Send + Sync {
    /// What the model declares, and what runs it.
    fn info(&self) -> &GraphInfo;

    /// The first output's shape and values for one image.
    fn run(
        &self,
        planar: Vec<f32>,
        height: u32,
        width: u32,
    ) -> Result<(Vec<usize>, Vec<f32>), String>;

    /// The first output's shape at `height` x `width`, from a run on a
    /// blank picture (at load: a network the runtime cannot run at that
    /// size fails its load, not a call).
    fn output_shape_at(&self, height: u32, width: u32) -> Result<Vec<usize>, String> {
        let blank = vec![0.0; 3 * height as usize * width as usize];
        self.run(blank, height, width).map(|(shape, _)| shape)
    }
}

/// What a loaded graph declares, and what runs it.
pub struct GraphInfo {
    /// The model's `metadata_props`.
    pub metadata: BTreeMap<String, String>,
    /// The first input's dimensions as declared.
    pub input: Vec<Dim>,
    /// As model listings and results say it (`onnxruntime 1.32.0`, `tract`).
    pub runs_on: String,
}

/// One declared dimension of an input: a number, or `None` with the
/// symbol's name (`batch`, `height`) for a dynamic one.
#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    pub size: Option<usize>,
    /// As the model declares it: the number, or the symbol.
    pub name: String,
}

/// The runtime image models are loaded with, and the threads each runs on.
/// ONNX Runtime's library is loaded when the first model is, not before: a
/// node that never sees a picture never maps it.
#[derive(Clone)]
pub struct Runtime {
    choice: RuntimeChoice,
    /// Where ONNX Runtime's library is (empty: where it is looked for).
    library: PathBuf,
    threads: usize,
}

/// What a model is loaded with, once the library has been looked for.
enum Resolved {
    Tract,
    Onnxruntime(Arc<onnxruntime::Library>),
    /// ONNX Runtime was asked for by name and did not load: why.
    Missing(String),
}

impl Default for Runtime {
    fn default() -> Self {
        Self::tract(1)
    }
}

impl Runtime {
    pub fn tract(threads: usize) -> Self {
        Self::choose(RuntimeChoice::Tract, Path::new(""), threads)
    }

    /// The runtime `choice` names, ONNX Runtime's library read from
    /// `library` (empty: beside this program, then in `../lib/jetsonmind`
    /// from it, then wherever the dynamic linker finds `libonnxruntime.so`).
    /// The library is loaded once per process; `auto` falls back to tract,
    /// saying why once, when it is not there.
    pub fn choose(choice: RuntimeChoice, library: &Path, threads: usize) -> Self {
        Self {
            choice,
            library: library.to_path_buf(),
            threads: threads.max(1),
        }
    }

    fn resolve(&self) -> Resolved {
        if self.choice == RuntimeChoice::Tract {
            return Resolved::Tract;
        }
        match onnxruntime::Library::load(&library_candidates(&self.library)) {
            Ok(library) => Resolved::Onnxruntime(library),
            Err(why) if self.choice == RuntimeChoice::Auto => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::info!(
                        "image models run on tract: ONNX Runtime's library did not load ({why}); \
                         ./setup.sh puts it beside the binary, or set \
                         compute.vision.onnxruntime_library"
                    )
                });
                Resolved::Tract
            }
            Err(why) => Resolved::Missing(why),
        }
    }

    /// Load the ONNX file at `path`; an error says why it cannot run here.
    pub fn load(&self, path: &Path) -> Result<Box<dyn Graph>, String> {
        match self.resolve() {
            Resolved::Tract => tract::TractGraph::load(path, self.threads)
                .map(|graph| Box::new(graph) as Box<dyn Graph>),
            Resolved::Onnxruntime(library) => library
                .session(path, self.threads)
                .map(|graph| Box::new(graph) as Box<dyn Graph>),
            Resolved::Missing(why) => Err(format!(
                "compute.vision.runtime is \"onnxruntime\", but its library did not load: {why}"
            )),
        }
    }
}

/// Where ONNX Runtime's library is looked for, in order.
fn library_candidates(configured: &Path) -> Vec<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return vec![configured.to_path_buf()];
    }
    // Beside the program (as set-up leaves it), then where the package puts
    // it (/usr/bin/jetsonmind, /usr/lib/jetsonmind/).
    let program_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.to_path_buf()));
    let packaged = program_dir
        .iter()
        .filter_map(|dir| Some(dir.parent()?.join("lib/jetsonmind")))
        .collect::<Vec<_>>();
    program_dir
        .into_iter()
        .chain(packaged)
        .map(|dir| dir.join(onnxruntime::LIBRARY))
        .chain(std::iter::once(PathBuf::from(onnxruntime::LIBRARY)))
        .collect()
}
