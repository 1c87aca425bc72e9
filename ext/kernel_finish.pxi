# Feature finishing: raw counters -> the model's features; included by ext/_kernel.pyx,
# twin: slidr/featurespec.py finish.

# ------------------------------------------------------------------------------ finish

cdef double _ALPHA = 0.697
cdef double _TWO_PI = 2.0 * 3.141592653589793


cdef inline double _hll_est(double z, double v) noexcept nogil:
    cdef double raw = _ALPHA * HLL_M * HLL_M / z
    if raw <= 2.5 * HLL_M and v > 0:
        return HLL_M * log(HLL_M / v)
    return raw


cdef inline double _blend(const double* x) noexcept nogil:
    """Sliding-window estimate of the HLL whose (z, v, pz, pv, frac) start at x."""
    return _hll_est(x[0], x[1]) + _hll_est(x[2], x[3]) * (1.0 - x[4])


cdef inline double _rate_ratio(double c1h, double c1d, double ratio) noexcept nogil:
    if c1d == 0:
        return 0.0
    return log(ratio * (c1h + 1.0) / (c1d + 1.0))


def finish_into(raw, ts, tz_offset_min, logged_in, device, out=None):
    """Native twin of featurespec.finish: raw counters -> float32 features (n, N_FEATURES)."""
    cdef const double[:, ::1] r = np.ascontiguousarray(raw, dtype=np.float64)
    cdef const int64_t[::1] tsv = np.ascontiguousarray(ts, dtype=np.int64)
    cdef const int64_t[::1] tz = np.ascontiguousarray(tz_offset_min, dtype=np.int64)
    cdef const uint8_t[::1] li = np.ascontiguousarray(logged_in, dtype=np.uint8)
    cdef const uint8_t[::1] dev = np.ascontiguousarray(device, dtype=np.uint8)
    cdef Py_ssize_t n = r.shape[0], i, k, j
    if out is None:
        out = np.empty((n, N_FEATURES), dtype=np.float32)
    cdef float[:, ::1] o = out
    if n and r.shape[1] != RAW_WIDTH:
        raise ValueError(f"finish_into: raw must have shape (n, {RAW_WIDTH})")
    if (tsv.shape[0] != n or tz.shape[0] != n or li.shape[0] != n or dev.shape[0] != n
            or o.shape[0] != n or o.shape[1] != N_FEATURES):
        raise ValueError("finish_into: column lengths / out shape do not match raw")
    cdef double g, est, hour_angle, dow_angle, dow
    cdef int64_t local, day_ms, days
    cdef const double* x
    cdef Py_ssize_t bad = -1
    if n == 0:
        return out
    with nogil:
      for i in range(n):
          x = &r[i, 0]
          for k in range(4):
              o[i, k] = <float>log1p(x[k])
          g = x[4]
          o[i, 4] = <float>log1p(GAP_CAP if g < 0 else (g if g < GAP_CAP else GAP_CAP))
          o[i, 5] = <float>log1p(x[R_S])
          o[i, 6] = <float>log1p(x[R_S + 1])
          g = x[R_S + 2]
          o[i, 7] = <float>log1p(GAP_CAP if g < 0 else (g if g < GAP_CAP else GAP_CAP))
          o[i, 8] = <float>log1p(x[R_S + 3])
          o[i, 9] = <float>log1p(x[R_I])
          o[i, 10] = <float>log1p(x[R_I + 1])
          o[i, 11] = <float>log1p(x[R_I + 2])
          for j in range(4):
              o[i, 12 + j] = <float>log1p(_blend(x + R_I + 4 + 5 * j))
          local = tsv[i] + tz[i] * 60000
          day_ms = local - _floordiv(local, DAY_MS) * DAY_MS
          days = _floordiv(local, DAY_MS)
          hour_angle = _TWO_PI * day_ms / 86400000.0
          dow = <double>((days + 3) - _floordiv(days + 3, 7) * 7) + day_ms / 86400000.0
          dow_angle = _TWO_PI * dow / 7.0
          o[i, 16] = <float>sin(hour_angle)
          o[i, 17] = <float>cos(hour_angle)
          o[i, 18] = <float>sin(dow_angle)
          o[i, 19] = <float>cos(dow_angle)
          o[i, 20] = li[i]
          o[i, 21] = 0.0
          o[i, 22] = 0.0
          o[i, 23] = 0.0
          if dev[i] > 2:
              bad = i
              break
          o[i, 21 + dev[i]] = 1.0
          o[i, 24] = <float>log1p(x[R_S + 4])
          o[i, 25] = <float>(x[R_S + 6] if x[R_S + 5] > 0 else LOG_GAP_CAP)
          o[i, 26] = <float>(sqrt(x[R_S + 7] / x[R_S + 5]) if x[R_S + 5] >= 2 else -1.0)
          o[i, 27] = <float>log1p(x[R_I + 3])
          o[i, 28] = <float>(x[R_I + 24] / x[R_I + 2] if x[R_I + 2] > 0 else 0.0)
          o[i, 29] = <float>(x[R_I + 25] / x[R_I + 2] if x[R_I + 2] > 0 else 0.0)  # spec 5
          # spec 4: the user's gap regularity; ad (a), (IP, ad) (x), user agent (g)
          o[i, 30] = <float>(sqrt(x[7] / x[5]) if x[5] >= 2 else -1.0)
          o[i, 31] = <float>log1p(x[R_E])
          o[i, 32] = <float>log1p(x[R_E + 1])
          o[i, 33] = <float>log1p(x[R_E + 2])
          o[i, 34] = <float>_rate_ratio(x[R_E + 1], x[R_E + 2], 24.0)
          o[i, 35] = <float>log1p(_blend(x + R_E + E_NC + 5))
          o[i, 36] = <float>log1p(_blend(x + R_E + E_NC))
          o[i, 37] = <float>log1p(x[R_E + E_W + 1])
          o[i, 38] = <float>log1p(x[R_E + E_W + 2])
          o[i, 39] = <float>log1p(_blend(x + R_E + E_W + E_NC))
          o[i, 40] = <float>log1p(x[R_E + 2 * E_W + 1])
          o[i, 41] = <float>_rate_ratio(x[R_E + 2 * E_W + 1], x[R_E + 2 * E_W + 2], 24.0)
          o[i, 42] = <float>log1p(_blend(x + R_E + 2 * E_W + E_NC + 5))
          o[i, 43] = <float>_rate_ratio(x[R_E + 2], x[R_E + 3], 7.0)
          o[i, 44] = <float>_rate_ratio(x[R_E + 2 * E_W + 2], x[R_E + 2 * E_W + 3], 7.0)
    if bad >= 0:
        raise ValueError(f"finish_into: device code {dev[bad]} at row {bad} is not 0, 1 or 2")
    return out
