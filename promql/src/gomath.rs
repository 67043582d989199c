//! Go's `math` functions that Prometheus calls, where the C library's
//! (correctly rounded or otherwise) answer differs in the last bit: the same
//! approximations (Cephes' for the trigonometric functions, with Payne and
//! Hanek's reduction of huge arguments, FreeBSD's for the logarithm, which
//! Go's amd64 assembly computes in the same order, Shibata's for the
//! exponential as Go's amd64 assembly computes it), with the same operation
//! order. Constants are the published ones; their
//! extra digits round to the same `f64`.
#![allow(clippy::excessive_precision)]

use std::f64::consts::{FRAC_2_PI, FRAC_PI_2, FRAC_PI_4, LN_2, LOG2_E, LOG10_E, PI, SQRT_2};

/// `math.Atan2`: the quadrant from the signs, the angle from [`atan`].
pub(crate) fn atan2(y: f64, x: f64) -> f64 {
    if y.is_nan() || x.is_nan() {
        return f64::NAN;
    }
    if y == 0.0 {
        return if x >= 0.0 && x.is_sign_positive() {
            0f64.copysign(y)
        } else {
            PI.copysign(y)
        };
    }
    if x == 0.0 {
        return FRAC_PI_2.copysign(y);
    }
    if x.is_infinite() {
        let angle = match (x > 0.0, y.is_infinite()) {
            (true, true) => FRAC_PI_4,
            (true, false) => 0.0,
            (false, true) => 3.0 * PI / 4.0,
            (false, false) => PI,
        };
        return angle.copysign(y);
    }
    if y.is_infinite() {
        return FRAC_PI_2.copysign(y);
    }
    let q = atan(y / x);
    if x < 0.0 {
        if q <= 0.0 { q + PI } else { q - PI }
    } else {
        q
    }
}

/// `math.Atan`.
fn atan(x: f64) -> f64 {
    if x == 0.0 {
        x
    } else if x > 0.0 {
        satan(x)
    } else {
        -satan(-x)
    }
}

/// Go's `satan`: reduces a non-negative argument to [0, 0.66].
fn satan(x: f64) -> f64 {
    // pi/2 = FRAC_PI_2 + MORE_BITS.
    const MORE_BITS: f64 = 6.123233995736765886130e-17;
    const TAN_3PI_8: f64 = 2.41421356237309504880;
    if x <= 0.66 {
        xatan(x)
    } else if x > TAN_3PI_8 {
        FRAC_PI_2 - xatan(1.0 / x) + MORE_BITS
    } else {
        FRAC_PI_4 + xatan((x - 1.0) / (x + 1.0)) + 0.5 * MORE_BITS
    }
}

/// Go's `xatan`: a rational approximation on [0, 0.66].
fn xatan(x: f64) -> f64 {
    const P: [f64; 5] = [
        -8.750608600031904122785e-01,
        -1.615753718733365076637e+01,
        -7.500855792314704667340e+01,
        -1.228866684490136173410e+02,
        -6.485021904942025371773e+01,
    ];
    const Q: [f64; 5] = [
        2.485846490142306297962e+01,
        1.650270098316988542046e+02,
        4.328810604912902668951e+02,
        4.853903996359136964868e+02,
        1.945506571482613964425e+02,
    ];
    let z = x * x;
    let z = z * ((((P[0] * z + P[1]) * z + P[2]) * z + P[3]) * z + P[4])
        / (((((z + Q[0]) * z + Q[1]) * z + Q[2]) * z + Q[3]) * z + Q[4]);
    x * z + x
}

/// `math.Asin`, through [`satan`].
pub(crate) fn asin(x: f64) -> f64 {
    if x == 0.0 {
        return x;
    }
    let a = x.abs();
    if a > 1.0 {
        return f64::NAN;
    }
    let temp = (1.0 - a * a).sqrt();
    let angle = if a > 0.7 {
        FRAC_PI_2 - satan(temp / a)
    } else {
        satan(a / temp)
    };
    if x < 0.0 { -angle } else { angle }
}

/// `math.Acos`.
pub(crate) fn acos(x: f64) -> f64 {
    FRAC_PI_2 - asin(x)
}

/// Above this, [`trig_reduce`] reduces the argument exactly (Go's `reduceThreshold`).
const REDUCE_THRESHOLD: f64 = (1u64 << 29) as f64;

/// The octant `j` (0..=7) of a non-negative `x` and the remainder `z`, for
/// `sin`, `cos` and `tan`: `x - j*pi/4` in three parts below the threshold,
/// [`trig_reduce`] above. `j` is rounded up to even, `z` may be negative.
fn octant(x: f64) -> (u64, f64) {
    // pi/4 split into three parts.
    const PI4A: f64 = 7.85398125648498535156e-1;
    const PI4B: f64 = 3.77489470793079817668e-8;
    const PI4C: f64 = 2.69515142907905952645e-15;
    if x >= REDUCE_THRESHOLD {
        return trig_reduce(x);
    }
    // 4/pi as Go's constant arithmetic rounds it (doubling is exact).
    let mut j = (x * (2.0 * FRAC_2_PI)) as u64;
    let mut y = j as f64;
    if j & 1 == 1 {
        j += 1;
        y += 1.0;
    }
    (j & 7, ((x - y * PI4A) - y * PI4B) - y * PI4C)
}

/// Go's `trigReduce`: Payne and Hanek's reduction of `x >= 2^29` by pi/4,
/// multiplying the mantissa by the bits of 4/pi that matter at its exponent.
fn trig_reduce(x: f64) -> (u64, f64) {
    /// The binary digits of 4/pi.
    const M_PI4: [u64; 20] = [
        0x0000000000000001,
        0x45f306dc9c882a53,
        0xf84eafa3ea69bb81,
        0xb6c52b3278872083,
        0xfca2c757bd778ac3,
        0x6e48dc74849ba5c0,
        0x0c925dd413a32439,
        0xfc3bd63962534e7d,
        0xd1046bea5d768909,
        0xd338e04d68befc82,
        0x7323ac7306a673e9,
        0x3908bf177bf25076,
        0x3ff12fffbc0b301f,
        0xde5e2316b414da3e,
        0xda6cfd9e4f96136e,
        0x9e8c7ecd3cbfd45a,
        0xea4f758fd7cbe2f6,
        0x7a0e73ef14a525d4,
        0xd7f6bf623f1aba10,
        0xac06608df8f6d757,
    ];
    if x < FRAC_PI_4 {
        return (0, x);
    }
    // x = ix * 2^exp, ix the mantissa with its implicit bit.
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023 - 52;
    let ix = (bits & !(0x7ff << 52)) | (1 << 52);
    // Three 64-bit digits of 4/pi such that the product's leading digit has exponent -61.
    let digit = ((exp + 61) / 64) as usize;
    let shift = ((exp + 61) % 64) as u32;
    let window = |i: usize| (M_PI4[i] << shift) | M_PI4[i + 1].checked_shr(64 - shift).unwrap_or(0);
    let (z0, z1, z2) = (window(digit), window(digit + 1), window(digit + 2));
    let mul = |a: u64, b: u64| {
        let p = u128::from(a) * u128::from(b);
        ((p >> 64) as u64, p as u64)
    };
    let (z2hi, _) = mul(z2, ix);
    let (z1hi, z1lo) = mul(z1, ix);
    let z0lo = z0.wrapping_mul(ix);
    let (lo, carry) = z1lo.overflowing_add(z2hi);
    let hi = z0lo.wrapping_add(z1hi).wrapping_add(u64::from(carry));
    // The top 3 bits are the octant, the rest the fraction.
    let mut j = hi >> 61;
    let hi = (hi << 3) | (lo >> 61);
    let lz = hi.leading_zeros();
    let e = u64::from(1023 - (lz + 1));
    let hi = ((hi << (lz + 1)) | lo.checked_shr(64 - (lz + 1)).unwrap_or(0)) >> 12;
    let mut z = f64::from_bits(hi | (e << 52));
    if j & 1 == 1 {
        j = (j + 1) & 7;
        z -= 1.0;
    }
    (j, z * FRAC_PI_4)
}

/// Cephes' sine on [-pi/4, pi/4].
fn sin_poly(z: f64, zz: f64) -> f64 {
    const S: [f64; 6] = [
        1.58962301576546568060e-10,
        -2.50507477628578072866e-8,
        2.75573136213857245213e-6,
        -1.98412698295895385996e-4,
        8.33333333332211858878e-3,
        -1.66666666666666307295e-1,
    ];
    z + z * zz * (((((S[0] * zz + S[1]) * zz + S[2]) * zz + S[3]) * zz + S[4]) * zz + S[5])
}

/// Cephes' cosine on [-pi/4, pi/4].
fn cos_poly(zz: f64) -> f64 {
    const C: [f64; 6] = [
        -1.13585365213876817300e-11,
        2.08757008419747316778e-9,
        -2.75573141792967388112e-7,
        2.48015872888517045348e-5,
        -1.38888888888730564116e-3,
        4.16666666666665929218e-2,
    ];
    1.0 - 0.5 * zz
        + zz * zz * (((((C[0] * zz + C[1]) * zz + C[2]) * zz + C[3]) * zz + C[4]) * zz + C[5])
}

/// `math.Sin`.
pub(crate) fn sin(x: f64) -> f64 {
    if x == 0.0 || x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return f64::NAN;
    }
    let (mut j, z) = octant(x.abs());
    let mut negative = x < 0.0;
    if j > 3 {
        negative = !negative;
        j -= 4;
    }
    let zz = z * z;
    let y = if j == 1 || j == 2 {
        cos_poly(zz)
    } else {
        sin_poly(z, zz)
    };
    if negative { -y } else { y }
}

/// `math.Cos`.
pub(crate) fn cos(x: f64) -> f64 {
    if x.is_nan() || x.is_infinite() {
        return f64::NAN;
    }
    let (mut j, z) = octant(x.abs());
    let mut negative = false;
    if j > 3 {
        j -= 4;
        negative = !negative;
    }
    if j > 1 {
        negative = !negative;
    }
    let zz = z * z;
    let y = if j == 1 || j == 2 {
        sin_poly(z, zz)
    } else {
        cos_poly(zz)
    };
    if negative { -y } else { y }
}

/// `math.Tan`.
pub(crate) fn tan(x: f64) -> f64 {
    const P: [f64; 3] = [
        -1.30936939181383777646e4,
        1.15351664838587416140e6,
        -1.79565251976484877988e7,
    ];
    const Q: [f64; 4] = [
        1.36812963470692954678e4,
        -1.32089234440210967447e6,
        2.50083801823357915839e7,
        -5.38695755929454629881e7,
    ];
    if x == 0.0 || x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return f64::NAN;
    }
    let (j, z) = octant(x.abs());
    let zz = z * z;
    let mut y = if zz > 1e-14 {
        z + z
            * (zz * ((P[0] * zz + P[1]) * zz + P[2])
                / ((((zz + Q[0]) * zz + Q[1]) * zz + Q[2]) * zz + Q[3]))
    } else {
        z
    };
    if j & 2 == 2 {
        y = -1.0 / y;
    }
    if x < 0.0 { -y } else { y }
}

/// `math.Frexp`: a fraction in [0.5, 1) and a power of two.
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let (x, shift) = if x.abs() < f64::MIN_POSITIVE {
        (x * (1u64 << 52) as f64, -52)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1022 + shift;
    let frac = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (frac, exp)
}

/// ln(2) split in two for exact argument reduction, shared by `math.Log` and `math.Log1p`.
const LN2_HI: f64 = 6.93147180369123816490e-01;
const LN2_LO: f64 = 1.90821492927058770002e-10;
/// The polynomial coefficients `math.Log` and `math.Log1p` share.
const LOG_POLY: [f64; 7] = [
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
];

/// `math.Log`.
pub(crate) fn ln(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    let (mut f1, mut ki) = frexp(x);
    if f1 < SQRT_2 / 2.0 {
        f1 *= 2.0;
        ki -= 1;
    }
    let f = f1 - 1.0;
    let k = f64::from(ki);
    let s = f / (2.0 + f);
    let s2 = s * s;
    let s4 = s2 * s2;
    let t1 = s2 * (LOG_POLY[0] + s4 * (LOG_POLY[2] + s4 * (LOG_POLY[4] + s4 * LOG_POLY[6])));
    let t2 = s4 * (LOG_POLY[1] + s4 * (LOG_POLY[3] + s4 * LOG_POLY[5]));
    let r = t1 + t2;
    let hfsq = 0.5 * f * f;
    k * LN2_HI - ((hfsq - (s * (hfsq + r) + k * LN2_LO)) - f)
}

/// `math.Log2`: exact for powers of two.
pub(crate) fn log2(x: f64) -> f64 {
    let (frac, exp) = frexp(x);
    if frac == 0.5 {
        return f64::from(exp - 1);
    }
    ln(frac) * LOG2_E + f64::from(exp)
}

/// `math.Log10`.
pub(crate) fn log10(x: f64) -> f64 {
    ln(x) * LOG10_E
}

/// `math.Exp` as Go runs it on amd64 (assembly after Shibata's method):
/// `x = k*ln2 + r`, e^(r/16) - 1 from a Taylor polynomial, squared up four
/// times, scaled by 2^k. With AVX and FMA, which Go uses when the CPU has
/// them, the reduction and the polynomial are fused multiply-adds.
pub(crate) fn exp(x: f64) -> f64 {
    // ln 2 in an upper and a lower part.
    const LN2U: f64 = 0.69314718055966295651160180568695068359375;
    const LN2L: f64 = 0.28235290563031577122588448175013436025525412068e-12;
    const OVERFLOW: f64 = 7.09782712893384e+02;
    // 1/8!, 1/7!, ..., 1/3!, then 1/2 and 1.
    const TAYLOR: [f64; 8] = [
        2.4801587301587301587e-5,
        1.9841269841269841270e-4,
        1.3888888888888888889e-3,
        8.3333333333333333333e-3,
        4.1666666666666666667e-2,
        1.6666666666666666667e-1,
        0.5,
        1.0,
    ];
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == f64::NEG_INFINITY {
        return 0.0;
    }
    if x > OVERFLOW {
        return f64::INFINITY;
    }
    // Rounded to nearest as CVTSD2SL does; out of range it gives i32::MIN.
    let k = (LOG2_E * x).round_ties_even();
    let k = if (-2147483648.0..=2147483647.0).contains(&k) {
        k as i32
    } else {
        i32::MIN
    };
    let kf = f64::from(k);
    let fused = fma_available();
    let mut r = if fused {
        (-kf).mul_add(LN2L, (-kf).mul_add(LN2U, x))
    } else {
        (x - kf * LN2U) - kf * LN2L
    };
    r *= 0.0625;
    let mut p = TAYLOR[0];
    for c in &TAYLOR[1..] {
        p = if fused { p.mul_add(r, *c) } else { p * r + c };
    }
    let mut y = r * p;
    for _ in 0..3 {
        y *= y + 2.0;
    }
    let y = if fused {
        y.mul_add(y + 2.0, 1.0)
    } else {
        y * (y + 2.0) + 1.0
    };
    // y * 2^k, through the subnormal range in two steps.
    let biased = k.saturating_add(0x3ff);
    if biased >= 0x7ff {
        return f64::INFINITY;
    }
    if biased > 0 {
        return y * f64::from_bits((biased as u64) << 52);
    }
    if biased < -52 {
        return 0.0;
    }
    y * f64::from_bits(((biased + 0x3fe) as u64) << 52) * f64::MIN_POSITIVE
}

/// `math.Sinh`: a rational approximation up to 0.5, [`exp`] above.
pub(crate) fn sinh(x: f64) -> f64 {
    const P: [f64; 4] = [
        -0.6307673640497716991184787251e+6,
        -0.8991272022039509355398013511e+5,
        -0.2894211355989563807284660366e+4,
        -0.2630563213397497062819489e+2,
    ];
    const Q: [f64; 3] = [
        -0.6307673640497716991212077277e+6,
        0.1521517378790019070696485176e+5,
        -0.173678953558233699533450911e+3,
    ];
    // Negated only when negative, as Go does, so -0 stays -0.
    let a = if x < 0.0 { -x } else { x };
    let y = if a > 21.0 {
        exp(a) * 0.5
    } else if a > 0.5 {
        let ex = exp(a);
        (ex - 1.0 / ex) * 0.5
    } else {
        let sq = a * a;
        let p = (((P[3] * sq + P[2]) * sq + P[1]) * sq + P[0]) * a;
        p / (((sq + Q[2]) * sq + Q[1]) * sq + Q[0])
    };
    if x < 0.0 { -y } else { y }
}

/// `math.Cosh`, through [`exp`].
pub(crate) fn cosh(x: f64) -> f64 {
    let a = x.abs();
    if a > 21.0 {
        return exp(a) * 0.5;
    }
    let ex = exp(a);
    (ex + 1.0 / ex) * 0.5
}

/// `math.Tanh`: a rational approximation below 0.625, [`exp`] above.
pub(crate) fn tanh(x: f64) -> f64 {
    // ln(2^127).
    const MAXLOG: f64 = 8.8029691931113054295988e+01;
    const P: [f64; 3] = [
        -9.64399179425052238628e-1,
        -9.92877231001918586564e1,
        -1.61468768441708447952e3,
    ];
    const Q: [f64; 3] = [
        1.12811678491632931402e2,
        2.23548839060100448583e3,
        4.84406305325125486048e3,
    ];
    let z = x.abs();
    if z > 0.5 * MAXLOG {
        return if x < 0.0 { -1.0 } else { 1.0 };
    }
    if z >= 0.625 {
        let s = exp(2.0 * z);
        let z = 1.0 - 2.0 / (s + 1.0);
        return if x < 0.0 { -z } else { z };
    }
    if x == 0.0 {
        return x;
    }
    let s = x * x;
    x + x * s * ((P[0] * s + P[1]) * s + P[2]) / (((s + Q[0]) * s + Q[1]) * s + Q[2])
}

/// `math.Asinh`.
pub(crate) fn asinh(x: f64) -> f64 {
    const NEAR_ZERO: f64 = 1.0 / (1u64 << 28) as f64;
    const LARGE: f64 = (1u64 << 28) as f64;
    if x.is_nan() || x.is_infinite() {
        return x;
    }
    let a = if x < 0.0 { -x } else { x };
    let y = if a > LARGE {
        ln(a) + LN_2
    } else if a > 2.0 {
        ln(2.0 * a + 1.0 / ((a * a + 1.0).sqrt() + a))
    } else if a < NEAR_ZERO {
        a
    } else {
        log1p(a + a * a / (1.0 + (1.0 + a * a).sqrt()))
    };
    if x < 0.0 { -y } else { y }
}

/// `math.Acosh`.
pub(crate) fn acosh(x: f64) -> f64 {
    const LARGE: f64 = (1u64 << 28) as f64;
    if x < 1.0 || x.is_nan() {
        return f64::NAN;
    }
    if x == 1.0 {
        return 0.0;
    }
    if x >= LARGE {
        return ln(x) + LN_2;
    }
    if x > 2.0 {
        return ln(2.0 * x - 1.0 / (x + (x * x - 1.0).sqrt()));
    }
    let t = x - 1.0;
    log1p(t + (2.0 * t + t * t).sqrt())
}

/// `math.Atanh`.
pub(crate) fn atanh(x: f64) -> f64 {
    const NEAR_ZERO: f64 = 1.0 / (1u64 << 28) as f64;
    if !(-1.0..=1.0).contains(&x) || x.is_nan() {
        return f64::NAN;
    }
    if x == 1.0 || x == -1.0 {
        return f64::INFINITY.copysign(x);
    }
    let a = if x < 0.0 { -x } else { x };
    let y = if a < NEAR_ZERO {
        a
    } else if a < 0.5 {
        let t = a + a;
        0.5 * log1p(t + t * a / (1.0 - a))
    } else {
        0.5 * log1p((a + a) / (1.0 - a))
    };
    if x < 0.0 { -y } else { y }
}

/// `math.Log1p` (FreeBSD's): ln(1 + x), exact for tiny `x`.
fn log1p(x: f64) -> f64 {
    const SQRT2_M1: f64 = 4.142135623730950488017e-01;
    const SQRT2_HALF_M1: f64 = -2.928932188134524755992e-01;
    const SMALL: f64 = 1.0 / (1u64 << 29) as f64;
    const TINY: f64 = 1.0 / (1u64 << 54) as f64;
    const TWO53: f64 = (1u64 << 53) as f64;
    if x < -1.0 || x.is_nan() {
        return f64::NAN;
    }
    if x == -1.0 {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let a = x.abs();
    let (mut f, mut iu, mut k) = (0.0, 0u64, 1i64);
    if a < SQRT2_M1 {
        if a < SMALL {
            if a < TINY {
                return x;
            }
            return x - x * x * 0.5;
        }
        if x > SQRT2_HALF_M1 {
            k = 0;
            f = x;
            iu = 1;
        }
    }
    let mut c = 0.0;
    if k != 0 {
        let mut u;
        if a < TWO53 {
            u = 1.0 + x;
            iu = u.to_bits();
            k = (iu >> 52) as i64 - 1023;
            c = if k > 0 { 1.0 - (u - x) } else { x - (u - 1.0) };
            c /= u;
        } else {
            u = x;
            iu = u.to_bits();
            k = (iu >> 52) as i64 - 1023;
        }
        iu &= 0x000f_ffff_ffff_ffff;
        if iu < 0x0006_a09e_667f_3bcd {
            u = f64::from_bits(iu | 0x3ff0_0000_0000_0000);
        } else {
            k += 1;
            u = f64::from_bits(iu | 0x3fe0_0000_0000_0000);
            iu = (0x0010_0000_0000_0000 - iu) >> 2;
        }
        f = u - 1.0;
    }
    let kf = k as f64;
    let hfsq = 0.5 * f * f;
    if iu == 0 {
        if f == 0.0 {
            if k == 0 {
                return 0.0;
            }
            c += kf * LN2_LO;
            return kf * LN2_HI + c;
        }
        let r = hfsq * (1.0 - 0.66666666666666666 * f);
        if k == 0 {
            return f - r;
        }
        return kf * LN2_HI - ((r - (kf * LN2_LO + c)) - f);
    }
    let s = f / (2.0 + f);
    let z = s * s;
    let r = z
        * (LOG_POLY[0]
            + z * (LOG_POLY[1]
                + z * (LOG_POLY[2]
                    + z * (LOG_POLY[3]
                        + z * (LOG_POLY[4] + z * (LOG_POLY[5] + z * LOG_POLY[6]))))));
    if k == 0 {
        return f - (hfsq - s * (hfsq + r));
    }
    kf * LN2_HI - ((hfsq - (s * (hfsq + r) + (kf * LN2_LO + c))) - f)
}

/// Prometheus's `deg`: `v * 180 / pi`, in that order (not Rust's one
/// multiplication by a rounded 180/pi).
pub(crate) fn deg(v: f64) -> f64 {
    v * 180.0 / PI
}

/// Prometheus's `rad`: `v * pi / 180`.
pub(crate) fn rad(v: f64) -> f64 {
    v * PI / 180.0
}

/// Whether Go's amd64 `math.Exp` takes its fused multiply-add path on this CPU.
fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `math.Ldexp`: `frac * 2^exp`, rounding once into the subnormal range.
fn ldexp(frac: f64, exp: i64) -> f64 {
    if frac == 0.0 || !frac.is_finite() {
        return frac;
    }
    let (frac, e) = if frac.abs() < f64::MIN_POSITIVE {
        (frac * (1u64 << 52) as f64, -52)
    } else {
        (frac, 0)
    };
    let bits = frac.to_bits();
    let mut exp = exp + e + ((bits >> 52) & 0x7ff) as i64 - 1023;
    if exp < -1075 {
        return 0f64.copysign(frac);
    }
    if exp > 1023 {
        return f64::INFINITY.copysign(frac);
    }
    let mut m = 1.0;
    if exp < -1022 {
        exp += 53;
        m = 1.0 / (1u64 << 53) as f64;
    }
    m * f64::from_bits((bits & !(0x7ff << 52)) | (((exp + 1023) as u64) << 52))
}

/// Whether `x` is an odd integer (Go's `isOddInt`).
fn is_odd_int(x: f64) -> bool {
    x.abs() < (1u64 << 53) as f64 && x.fract() == 0.0 && (x as i64) & 1 == 1
}

/// `math.Pow`: the fractional part of the exponent through [`exp`] and
/// [`ln`], the integer part by repeated squaring of the mantissa.
pub(crate) fn pow(x: f64, y: f64) -> f64 {
    if y == 0.0 || x == 1.0 {
        return 1.0;
    }
    if y == 1.0 {
        return x;
    }
    if x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    if x == 0.0 {
        let odd = x.is_sign_negative() && is_odd_int(y);
        return match (y < 0.0, odd) {
            (true, true) => f64::NEG_INFINITY,
            (true, false) => f64::INFINITY,
            (false, true) => x,
            (false, false) => 0.0,
        };
    }
    if y.is_infinite() {
        return if x == -1.0 {
            1.0
        } else if (x.abs() < 1.0) == (y > 0.0) {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if x.is_infinite() {
        if x < 0.0 {
            return pow(1.0 / x, -y);
        }
        return if y < 0.0 { 0.0 } else { f64::INFINITY };
    }
    if y == 0.5 {
        return x.sqrt();
    }
    if y == -0.5 {
        return 1.0 / x.sqrt();
    }
    let mut yi = y.abs().trunc();
    let mut yf = y.abs() - yi;
    if yf != 0.0 && x < 0.0 {
        return f64::NAN;
    }
    if yi >= 9223372036854775808.0 {
        return if x == -1.0 {
            1.0
        } else if (x.abs() < 1.0) == (y > 0.0) {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let (mut a1, mut ae) = (1.0, 0i64);
    if yf != 0.0 {
        if yf > 0.5 {
            yf -= 1.0;
            yi += 1.0;
        }
        a1 = exp(yf * ln(x));
    }
    let (mut x1, xe) = frexp(x);
    let mut xe = i64::from(xe);
    let mut i = yi as i64;
    while i != 0 {
        if !(-(1 << 12)..=1 << 12).contains(&xe) {
            ae += xe;
            break;
        }
        if i & 1 == 1 {
            a1 *= x1;
            ae += xe;
        }
        x1 *= x1;
        xe <<= 1;
        if x1 < 0.5 {
            x1 += x1;
            xe -= 1;
        }
        i >>= 1;
    }
    if y < 0.0 {
        a1 = 1.0 / a1;
        ae = -ae;
    }
    ldexp(a1, ae)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_cases_as_go() {
        assert_eq!(frexp(8.0), (0.5, 4));
        assert_eq!(frexp(f64::MIN_POSITIVE / 4.0), (0.5, -1023));
        assert_eq!(log2(1024.0), 10.0);
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan() && asin(1.5).is_nan());
        assert_eq!(asin(1.0), FRAC_PI_2);
        assert_eq!(acos(1.0), 0.0);
        assert_eq!(atan2(0.0, -1.0), PI);
        assert_eq!(atan2(f64::INFINITY, f64::NEG_INFINITY), 3.0 * PI / 4.0);
        assert!(sin(f64::INFINITY).is_nan() && cos(f64::NAN).is_nan());
        assert_eq!(sin(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(cos(0.0), 1.0);
        assert_eq!(tan(0.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(log1p(0.0), 0.0);
        assert_eq!(log1p(-1.0), f64::NEG_INFINITY);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(acosh(1.0), 0.0);
        assert_eq!(atanh(-1.0), f64::NEG_INFINITY);
        assert_eq!(asinh(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert_eq!(deg(PI), 180.0);
        for f in [sinh, tanh, asinh, atanh, sin, tan, asin] {
            assert_eq!(f(-0.0).to_bits(), (-0.0f64).to_bits());
        }
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(710.0), f64::INFINITY);
        assert_eq!(exp(-1e10), 0.0);
        assert!(exp(-745.0) > 0.0 && exp(-746.0) == 0.0);
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(2.0, -1.0), 0.5);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(pow(-0.0, -3.0), f64::NEG_INFINITY);
        assert_eq!(pow(2.0, -1075.0), 0.0);
        assert_eq!(pow(2.0, -1074.0), 5e-324);
        assert_eq!(ldexp(0.75, -1073), 5e-324 * 3.0 / 2.0);
    }
}
