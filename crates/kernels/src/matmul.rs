//! Matrix products whose right-hand side is known ahead (a layer's
//! weights): `out += a · b`, with `b` packed once, when the model loads.
//!
//! On x86-64 with AVX2 and FMA, `b` is stored in panels of 16 columns and
//! an intrinsics kernel computes 6 rows by 16 columns at a time, reading
//! `a` where it lies, as onnxruntime's MLAS does: `a` is the activations,
//! new at every call, so not packing it saves a copy per call, and a
//! 6-row slice of it stays in the L1 cache while the kernel walks a block
//! of `b` held in L2. The gemm crate's general kernel (which packs both
//! sides at every call) measured 20-25% slower on BERT's and Whisper's
//! shapes (bench/speech.py). Elsewhere (the Jetson's ARM cores, or an x86
//! without AVX2) the gemm crate computes the product from a plain copy.

use rayon::prelude::*;

/// Rows and columns one kernel call computes.
const MR: usize = 6;
const NR: usize = 16;
/// `a`'s columns (and `b`'s rows) per pass: a 6-row slice of `a` (6 KB)
/// stays in L1, a block of `b` (256 × 256, 256 KB) in L2.
const KC: usize = 256;
const NC: usize = 256;

/// A `k × n` matrix laid out for [`PackedMatrix::multiply_add`].
pub struct PackedMatrix {
    layout: Layout,
    k: usize,
    n: usize,
}

enum Layout {
    /// Panel `j` holds columns `16j..16j+16` (zero past `n`), row after row.
    Panels(Vec<f32>),
    /// Row-major, as given.
    Plain(Vec<f32>),
}

impl PackedMatrix {
    /// `b`, `k × n`, row-major.
    pub fn new(b: &[f32], k: usize, n: usize) -> Self {
        match avx2_fma() {
            true => Self::panels(b, k, n),
            false => Self::plain(b, k, n),
        }
    }

    fn panels(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "PackedMatrix: a {k} × {n} matrix");
        let mut panels = vec![0.0f32; n.div_ceil(NR) * k * NR];
        for (j, panel) in panels.chunks_exact_mut(k * NR).enumerate() {
            let columns = NR.min(n - j * NR);
            for (row, packed) in b.chunks_exact(n).zip(panel.chunks_exact_mut(NR)) {
                packed[..columns].copy_from_slice(&row[j * NR..][..columns]);
            }
        }
        Self {
            layout: Layout::Panels(panels),
            k,
            n,
        }
    }

    fn plain(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "PackedMatrix: a {k} × {n} matrix");
        Self {
            layout: Layout::Plain(b.to_vec()),
            k,
            n,
        }
    }

    /// `out += a · self`, for `a` row-major `m × k` and `out` `m × n`; the
    /// rows are split among rayon's threads.
    pub fn multiply_add(&self, out: &mut [f32], a: &[f32], m: usize) {
        self.multiply_from(out, a, m, |_, _| {});
    }

    /// `out = start + a · self`, where `start(first_row, block)` writes the
    /// starting values (a bias, a residual) into `block`, whole rows of `out`
    /// from `first_row` on. With the panels, each thread's block is started
    /// by that thread just before it adds the product to it, while the rows
    /// are in its cache, rather than in a pass of its own over all of `out`
    /// on one thread; the plain layout starts all of `out` at once.
    pub fn multiply_from(
        &self,
        out: &mut [f32],
        a: &[f32],
        m: usize,
        start: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let (k, n) = (self.k, self.n);
        assert!(
            a.len() == m * k && out.len() == m * n,
            "PackedMatrix: a {m} × {k} by {k} × {n} product"
        );
        if m == 0 || n == 0 {
            return;
        }
        match &self.layout {
            Layout::Panels(panels) => {
                let threads = rayon::current_num_threads().max(1);
                let rows_per_task = m.div_ceil(threads).div_ceil(MR) * MR;
                out.par_chunks_mut(rows_per_task * n)
                    .zip(a.par_chunks(rows_per_task * k))
                    .enumerate()
                    .for_each(|(task, (out, a))| {
                        start(task * rows_per_task, out);
                        multiply_panels(out, a, panels, k, n);
                    });
            }
            Layout::Plain(b) => {
                start(0, out);
                multiply_plain(out, a, b, m, k, n);
            }
        }
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out += a · b` on one thread, `b` in panels: for each block of `b`
/// (KC rows by NC columns), each 6 rows of `a` against each panel of the block.
fn multiply_panels(out: &mut [f32], a: &[f32], panels: &[f32], k: usize, n: usize) {
    let m = a.len() / k;
    let panel_count = n.div_ceil(NR);
    for k0 in (0..k).step_by(KC) {
        let depth = KC.min(k - k0);
        for first_panel in (0..panel_count).step_by(NC / NR) {
            let block = first_panel..panel_count.min(first_panel + NC / NR);
            for r0 in (0..m).step_by(MR) {
                let rows = MR.min(m - r0);
                for j in block.clone() {
                    let panel = &panels[j * k * NR + k0 * NR..][..depth * NR];
                    let columns = NR.min(n - j * NR);
                    let a = &a[r0 * k + k0..];
                    let out = &mut out[r0 * n + j * NR..];
                    tile(out, n, a, k, panel, rows, columns, depth);
                }
            }
        }
    }
}

/// `out`'s `rows × columns` tile (rows `n` apart) `+=` `rows` rows of `a`
/// (`k` apart, `depth` long) times one panel of `b`.
#[allow(clippy::too_many_arguments)]
fn tile(
    out: &mut [f32],
    n: usize,
    a: &[f32],
    k: usize,
    panel: &[f32],
    rows: usize,
    columns: usize,
    depth: usize,
) {
    assert!((1..=MR).contains(&rows) && (1..=NR).contains(&columns));
    assert!(panel.len() >= depth * NR && a.len() >= (rows - 1) * k + depth);
    assert!(out.len() >= (rows - 1) * n + columns);
    if columns == NR {
        // SAFETY: the asserts above: `a` holds `rows` rows `k` apart of
        // `depth` values, the panel `depth` rows of 16, `out` `rows` rows
        // `n` apart of 16; the panel layout exists only where AVX2 and FMA
        // were detected.
        unsafe {
            kernel(
                out.as_mut_ptr(),
                n,
                a.as_ptr(),
                k,
                panel.as_ptr(),
                rows,
                depth,
            )
        }
        return;
    }
    // The matrix's last, narrower panel: the kernel writes 16 columns, so
    // into a tile of our own, of which the valid columns are added.
    let mut own = [0.0f32; MR * NR];
    // SAFETY: as above, with `own` as the output: `rows` rows of 16.
    unsafe {
        kernel(
            own.as_mut_ptr(),
            NR,
            a.as_ptr(),
            k,
            panel.as_ptr(),
            rows,
            depth,
        )
    }
    for (r, own) in own.chunks_exact(NR).take(rows).enumerate() {
        for (o, v) in out[r * n..][..columns].iter_mut().zip(own) {
            *o += v;
        }
    }
}

/// Dispatch on the row count, so each kernel's accumulators are a fixed
/// number of registers.
///
/// # Safety
/// `a` points at `rows` rows `lda` apart of `depth` values, `panel` at
/// `depth` rows of 16, `out` at `rows` rows `ldc` apart of 16; AVX2 and
/// FMA are present.
unsafe fn kernel(
    out: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    panel: *const f32,
    rows: usize,
    depth: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match rows {
            6 => x86::kernel::<6>(out, ldc, a, lda, panel, depth),
            5 => x86::kernel::<5>(out, ldc, a, lda, panel, depth),
            4 => x86::kernel::<4>(out, ldc, a, lda, panel, depth),
            3 => x86::kernel::<3>(out, ldc, a, lda, panel, depth),
            2 => x86::kernel::<2>(out, ldc, a, lda, panel, depth),
            _ => x86::kernel::<1>(out, ldc, a, lda, panel, depth),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, ldc, a, lda, panel, rows, depth);
        unreachable!("panels are packed only where AVX2 and FMA are detected");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::NR;

    /// `R` rows by 16 columns: 2R accumulators of 8 lanes, a broadcast of
    /// `a`'s value and two loads of the panel's row per step.
    ///
    /// # Safety
    /// As [`super::kernel`], with `R` rows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel<const R: usize>(
        out: *mut f32,
        ldc: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        depth: usize,
    ) {
        let mut low = [_mm256_setzero_ps(); R];
        let mut high = [_mm256_setzero_ps(); R];
        // SAFETY: every pointer stays within the extents the caller vouches
        // for. In the loop they advance by `wrapping_add` and are read by
        // load intrinsics, not references: our crates build with debug
        // assertions, whose checks on `add` and on dereferences (overflow,
        // alignment) ran per value and kept this loop at half speed.
        unsafe {
            let mut a_rows: [*const f32; R] = std::array::from_fn(|r| a.add(r * lda));
            let mut b = panel;
            for _ in 0..depth {
                let b_low = _mm256_loadu_ps(b);
                let b_high = _mm256_loadu_ps(b.wrapping_add(8));
                for r in 0..R {
                    let value = _mm256_broadcastss_ps(_mm_load_ss(a_rows[r]));
                    low[r] = _mm256_fmadd_ps(value, b_low, low[r]);
                    high[r] = _mm256_fmadd_ps(value, b_high, high[r]);
                    a_rows[r] = a_rows[r].wrapping_add(1);
                }
                b = b.wrapping_add(NR);
            }
            for r in 0..R {
                let row = out.add(r * ldc);
                _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), low[r]));
                let row = row.add(8);
                _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), high[r]));
            }
        }
    }
}

/// `out += a · b` by the gemm crate, for row-major `a` (`m × k`), `b`
/// (`k × n`) and `out` (`m × n`).
fn multiply_plain(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(
        out.len() == m * n && a.len() == m * k && b.len() == k * n,
        "multiply_plain: shapes"
    );
    let parallelism = match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    };
    // SAFETY: the three slices hold exactly the elements the sizes and
    // row-major strides reach (checked above), and `out` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 1001.0)
            .collect()
    }

    fn plain_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    out[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        out
    }

    /// Both layouts against the product written out, on shapes that leave
    /// partial tiles, panels and blocks on every side, adding to what
    /// `out` held.
    #[test]
    fn products_equal_the_plain_formula() {
        let shapes = [
            (1, 1, 1),
            (5, 3, 7),
            (6, 16, 16),
            (13, 300, 40),
            (37, 520, 271),
            (100, 64, 513),
        ];
        // Three threads, so that rows are split into blocks whatever the
        // machine: each block's first row is then checked too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| shapes.into_iter().for_each(check_shape));
    }

    fn check_shape((m, k, n): (usize, usize, usize)) {
        let (a, b, start) = (values(m * k, 1), values(k * n, 2), values(m * n, 3));
        let mut want = plain_product(&a, &b, m, k, n);
        want.iter_mut().zip(&start).for_each(|(w, s)| *w += s);
        for packed in [PackedMatrix::new(&b, k, n), PackedMatrix::plain(&b, k, n)] {
            let mut added = start.clone();
            packed.multiply_add(&mut added, &a, m);
            // The same from zeros, the starting values written per block of rows.
            let mut started = vec![f32::NAN; m * n];
            packed.multiply_from(&mut started, &a, m, |first_row, rows| {
                rows.copy_from_slice(&start[first_row * n..][..rows.len()]);
            });
            for out in [added, started] {
                for (w, o) in want.iter().zip(&out) {
                    assert!(
                        (w - o).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}×{k}×{n}: {w} {o}"
                    );
                }
            }
        }
    }

    #[test]
    fn this_machine_uses_the_panels_when_it_can() {
        let packed = PackedMatrix::new(&[1.0; 4], 2, 2);
        assert_eq!(matches!(packed.layout, Layout::Panels(_)), avx2_fma());
    }
}
