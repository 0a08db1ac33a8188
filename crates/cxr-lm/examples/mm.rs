fn gemm_call(m: usize, n: usize, k: usize, dst: *mut f32, dst_cs: isize, dst_rs: isize, lhs: *const f32, lhs_cs: isize, lhs_rs: isize, rhs: *const f32, rhs_cs: isize, rhs_rs: isize) {
    unsafe { gemm::gemm(m, n, k, dst, dst_cs, dst_rs, false, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(2)) }
}
fn main() {
    for (m, n, k) in [(300usize, 1536usize, 512usize), (300, 512, 2048), (300,3072,1024), (300, 1024, 4096)] {
        let x: Vec<f32> = (0..m*k).map(|i| (i % 7) as f32).collect();
        let w: Vec<f32> = (0..n*k).map(|i| (i % 5) as f32).collect();
        let mut y = vec![0f32; m*n];
        let reps = 20;
        let fl = 2.0 * (m * n * k) as f64;
        let time = |f: &mut dyn FnMut()| { f(); let s = std::time::Instant::now(); for _ in 0..reps { f(); } s.elapsed().as_secs_f64() / reps as f64 };
        // A: y(m,n) = x(m,k) . W^T ; W^T[kk, j] = w[j*k + kk] -> rs 1, cs k
        let a = time(&mut || gemm_call(m, n, k, y.as_mut_ptr(), 1, n as isize, x.as_ptr(), 1, k as isize, w.as_ptr(), k as isize, 1));
        // B: y^T(n,m) = W(n,k) . x^T(k,m); y^T[j,i] = y[i*n+j] -> rs 1, cs n ; x^T[kk,i] = x[i*k+kk] -> rs 1, cs k
        let b = time(&mut || gemm_call(n, m, k, y.as_mut_ptr(), n as isize, 1, w.as_ptr(), 1, k as isize, x.as_ptr(), k as isize, 1));
        // C: y^T(n,m) = W(n,k) . xT(k,m) with xT contiguous (k,m): rs m, cs 1; transposing x included
        let mut xt = vec![0f32; m*k];
        let c = time(&mut || { for i in 0..m { for kk in 0..k { xt[kk*m+i] = x[i*k+kk]; } } gemm_call(n, m, k, y.as_mut_ptr(), n as isize, 1, w.as_ptr(), 1, k as isize, xt.as_ptr(), 1, m as isize) });
        // D: C but dst y^T contiguous (n,m) (then needs a transpose back)
        let mut yt = vec![0f32; m*n];
        let d = time(&mut || { gemm_call(n, m, k, yt.as_mut_ptr(), 1, m as isize, w.as_ptr(), 1, k as isize, xt.as_ptr(), 1, m as isize) });
        println!("m{m} n{n} k{k}: A {:.0} GF/s  B {:.0} GF/s C {:.0} D {:.0}", fl/a/1e9, fl/b/1e9, fl/c/1e9, fl/d/1e9);
    }
}
