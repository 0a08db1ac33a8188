use cxr_phantom::PhantomSpec;
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (seed, start, n) = (args[0], args[1], args[2]);
    let size = 256u32;
    let mut grid = image::GrayImage::new(size * n as u32, size);
    for i in 0..n {
        let spec = PhantomSpec::sample(seed, start + i);
        eprintln!(
            "#{} {:?} {:?}\n{}\n",
            start + i,
            spec.view,
            spec.findings,
            spec.sections.to_report()
        );
        let img = spec.render(size).to_luma8();
        image::imageops::replace(&mut grid, &img, (i as u32 * size) as i64, 0);
    }
    grid.save("/tmp/peek.png").unwrap();
}
