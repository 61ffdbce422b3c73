import mmap, time, sys
n = int(sys.argv[1]) << 30
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
t = time.perf_counter()
for off in range(0, n, 4096):
    m[off] = 1
dt = time.perf_counter() - t
print(f"{n>>30} GiB: {dt:.2f} s, {dt / (n / 4096) * 1e6:.2f} us/page")
