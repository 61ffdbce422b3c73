#!/usr/bin/env python3
"""Groups a flat perf profile into the shares README.md reports.

Input: `perf report -i perf.data --no-children --sort dso,sym --stdio`,
the lines with a percentage. Each symbol goes to the first group whose
pattern matches (user space by DSO, then by name: wake-ups and scheduler,
event interface, TCP/IP and loopback, other). Usage:
    categorize.py FLAT.txt [--other]   (--other: list the largest "other")
"""
import re,sys
cats=[
 ("user space (c10m-server, libc)", lambda d,s: d.strip()!='[kernel.kallsyms]'),
 ("wake-ups, IRQ restore, scheduler", lambda d,s: re.search(r'raw_spin_unlock_irq|try_to_wake|ttwu|schedule|finish_task_switch|__wake_up|enqueue|dequeue|update_curr|pick_next|select_task|psi_|native_sched|switch_|_raw_spin_lock|sched_|hrtimer|__run_timers|timerqueue|read_tsc|ktime',s)),
 ("event interface (epoll / io_uring, syscalls, fd lookup)", lambda d,s: re.search(r'^io_|^__io|io_uring|llist|ep_|epoll|sock_poll|tcp_poll|fdget|fget|fput|sock_from_file|syscall|entry_|__x64|__sys_|__do_sys|do_syscall|sockfd_lookup|import_ubuf|__check_object|check_heap|rw_verify|move_addr|security_socket|apparmor|task_work|io_cqring|__fget',s)),
 ("TCP/IP and loopback", lambda d,s: re.search(r'tcp|inet|ip_|^ip|skb|sock|sk_|loopback|dev_|netif|net_|__netif|bbr|napi|softirq|__release_sock|release_sock|lock_sock|copy|_copy|csum|neigh|dst_|nf_|raw_v4|__kfree|kfree|kmem|kmalloc|__alloc|alloc_|slab|memcg|refill|page_|mod_timer|__mod_timer|__build_skb|validate_xmit|rcu|sch_|qdisc|fib|__local_bh|local_bh|do_softirq|__irq_exit|irq_exit',s)),
 ("other kernel", lambda d,s: True),
]
tot={c:0.0 for c,_ in cats}
other=[]
for line in open(sys.argv[1]):
    m=re.match(r'\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)',line)
    if not m: continue
    p,d,s=float(m.group(1)),m.group(2),m.group(3).strip()
    for c,f in cats:
        if f(d,s):
            tot[c]+=p
            if c=="other kernel": other.append((p,s))
            break
for c,_ in cats: print(f"{tot[c]:6.1f}%  {c}")
if "--other" in sys.argv[2:]: print(sorted(other,reverse=True)[:15])
