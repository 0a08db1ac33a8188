//! Runtime selection of wider SIMD for hot loops.

/// `dispatch_simd!(generic, name, (args))` defines `name(args)`, which runs `generic` compiled
/// for AVX-512 or AVX2+FMA when the CPU has them (its loops then use wide vectors; the crate is
/// built for baseline x86-64), else as built. `generic` should be `#[inline(always)]`.
#[macro_export]
macro_rules! dispatch_simd {
    ($generic:ident, $name:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the feature the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}
