"""The trace generator's twin: pools from the cluster's objects, rows one by one in plain Python.

:func:`pools` reads the cluster object by object (dicts, lists, f-strings) into the
same fields :class:`fastpath.traces.synth._Pools` builds column-wise. :func:`rows` draws
rows with Python integers (SplitMix64 masked to 64 bits), ``math`` and sets, from
the model's description in :mod:`fastpath.traces.synth_kernel`: the same slots, the
same alias tables, so the kernel's rows must equal these exactly.
"""
from __future__ import annotations

import math

import numpy as np

from fastpath.traces import synth as S
from fastpath.traces import synth_kernel as K

MASK = (1 << 64) - 1


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def unit(base: int, slot: int) -> float:
    return (mix64((base + slot * K.GOLDEN) & MASK) >> 11) / float(1 << 53)


def below(u: float, n: int) -> int:
    return min(int(u * n), n - 1) if n > 0 else 0


def alias_draw(prob, alias, u: float) -> tuple[int, float]:
    """Vose's alias draw over one table, with the residual uniform."""
    k = len(prob)
    x = u * k
    i = min(int(x), k - 1)
    f = x - i
    if f < prob[i]:
        return i, min(f / prob[i], 0.9999999999999999)
    return int(alias[i]), min((f - prob[i]) / (1.0 - prob[i]), 0.9999999999999999)


def normal_quantile(u: float) -> float:
    """Acklam's normal quantile at ``u + 2**-54``, as written in his note."""
    a, b, c, d = K._A, K._B, K._C, K._D
    p = u + 2.0 ** -54

    def tail(q):
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)

    if p < K.P_LOW:
        return tail(math.sqrt(-2.0 * math.log(p)))
    if p > 1.0 - K.P_LOW:
        return -tail(math.sqrt(-2.0 * math.log1p(-p)))
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)


# --------------------------------------------------------------------------- pools, object by object

def pools(cluster, mix, seed: int) -> dict:
    """The pools' fields from the cluster's objects (what ``_Pools`` must equal)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,))))
    domain = cluster.domain
    clients = [p for p in cluster.pods if p.ip is not None and p.node is not None and not p.host_network]
    namespaces = sorted({p.namespace for p in clients})
    ns_id = {ns: i for i, ns in enumerate(namespaces)}
    out: dict = {"cli_ip": [p.ip for p in clients]}
    members = {i: [] for i in range(len(namespaces))}
    for k, p in enumerate(clients):
        members[ns_id[p.namespace]].append(k)
    out["ns_members"] = [k for i in range(len(namespaces)) for k in members[i]]
    out["ns_count"] = [len(members[i]) for i in range(len(namespaces))]
    out["cli_pcount"] = [len(p.ports) for p in clients]
    out["cli_port"] = [c.port for p in clients for c in p.ports]
    out["cli_proto"] = [c.proto for p in clients for c in p.ports]
    out["pp_ip"] = [p.ip for p in clients for _ in p.ports]
    out["listen_keys"] = sorted({(p.ip << 16) | c.port for p in clients for c in p.ports})
    out["pod_ips"] = sorted({p.ip for p in cluster.pods if p.ip is not None})
    out["host_ip"] = [n.internal_ip for n in cluster.nodes if n.internal_ip is not None]
    cidrs = [c for n in cluster.nodes for c in n.pod_cidrs if c[1] <= 30]
    out["cidr_net"] = [c[0] for c in cidrs]
    out["cidr_size"] = [1 << (32 - c[1]) for c in cidrs]
    services = [s for s in cluster.services if s.type != "ExternalName" and s.ports]
    rank = rng.permutation(len(services)) + 1
    svc_w = 1.0 / rank.astype(np.float64) ** float(mix.zipf)
    node_addr = [ip for n in cluster.nodes for ip in (n.internal_ip, n.external_ip) if ip is not None]
    out["node_addr"] = node_addr
    ci, ns_rows, ns_w = [], [], []
    for s, w in zip(services, svc_w):
        for sp in s.ports:
            for ip in s.cluster_ips:
                ci.append((ip, sp.port, sp.proto))
        outside = [(ip, sp.port, sp.proto, False) for sp in s.ports for ip in s.external_ips + s.lb_ips]
        node_ports = [(0, sp.node_port, sp.proto, True) for sp in s.ports if sp.node_port] \
            if s.type in ("NodePort", "LoadBalancer") and node_addr else []
        ns_rows += outside + node_ports
        share = w / max(1, len(outside) + len(node_ports) * len(node_addr))   # each (address, port) alike
        ns_w += [share] * len(outside) + [share * len(node_addr)] * len(node_ports)
    out["ci_ip"] = [r[0] for r in ci]
    out["ci_port"] = [r[1] for r in ci]
    out["ci_keys"] = sorted({(r[0] << 16) | r[1] for r in ci})
    out["ci_addrs"] = sorted({r[0] for r in ci})
    out["ns_ip"] = [r[0] for r in ns_rows]
    out["ns_port"] = [r[1] for r in ns_rows]
    out["ns_nodes"] = [r[3] for r in ns_rows]
    out["ns_w"] = ns_w
    names: dict[str, int] = {}
    for s in services:
        forms = [s.name, f"{s.name}.{s.namespace}", f"{s.name}.{s.namespace}.svc", f"{s.name}.{s.namespace}.svc.{domain}"]
        if s.namespace not in ns_id:
            forms = forms[1:]
        for form in forms:
            names.setdefault(form, len(names))
    by_ip = {p.ip: p.namespace for p in clients}       # the last client holding an address
    for p in clients:
        if p.ports:
            names.setdefault(f"{str(_ip(p.ip)).replace('.', '-')}.{by_ip[p.ip]}.pod.{domain}", len(names))
    out["names_prefix"] = list(names)
    return out


def _ip(x: int):
    import ipaddress

    return ipaddress.IPv4Address(x)


# --------------------------------------------------------------------------- rows, one by one

def rows(pools_obj, mix, seed: int, start: int, count: int) -> list[tuple]:
    """Rows ``start .. start + count``: (src, dst, sport, dport, proto, gap, code, bytes, packets, duration)."""
    p = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(pools_obj).items()}
    tables = {}
    for name, choice in (("kind", S._Choice(pools_obj.kind_weights(mix))), ("ci", pools_obj.ci),
                         ("ns", pools_obj.ns), ("nm", pools_obj.nm), ("egress", pools_obj.egress)):
        tables[name] = (choice.prob[:choice.k].tolist(), choice.alias[:choice.k].tolist())
    listen = set(p["listen_keys"])
    pod_ips = set(p["pod_ips"])
    ci_keys = set(p["ci_keys"])
    ways = [w for w, ok in enumerate((len(p["cidr_net"]) > 0, len(p["pp_ip"]) > 0, len(tables["ci"][0]) > 0)) if ok]
    svc_share = mix.via_service if p["pp_ip"] else 1.0
    svc_share = svc_share if tables["ci"][0] else 0.0
    key = S.seed_key(seed)
    n_cli, n_pp = len(p["cli_ip"]), len(p["pp_ip"])
    shares = [sh for _, _, sh in S.EGRESS_PORTS]
    cum = [sum(shares[:i + 1]) for i in range(len(shares))]
    out = []
    for r in range(start, start + count):
        base = mix64((key + r * K.GOLDEN) & MASK)
        u = [unit(base, s) for s in range(K.SLOTS)]
        kind, _ = alias_draw(*tables["kind"], u[K.S_KIND])
        dst, port, proto, code = 0, 0, 6, -1
        if kind in (K.K_EAST_WEST, K.K_HOST):
            src = p["cli_ip"][below(u[K.S_SRC], n_cli)] if kind == K.K_EAST_WEST \
                else p["host_ip"][below(u[K.S_SRC], len(p["host_ip"]))]
            if u[K.S_A] < svc_share:
                f, _ = alias_draw(*tables["ci"], u[K.S_B])
                dst, port, proto = p["ci_ip"][f], p["ci_port"][f], p["ci_proto"][f]
            else:
                k = below(u[K.S_B], n_pp)
                dst, port, proto = p["pp_ip"][k], p["pp_port"][k], p["pp_proto"][k]
        elif kind == K.K_NORTH_SOUTH:
            src = K.INTERNET_LO + below(u[K.S_SRC], K.INTERNET_HI - K.INTERNET_LO)
            f, v = alias_draw(*tables["ns"], u[K.S_A])
            dst = p["node_addr"][below(v, len(p["node_addr"]))] if p["ns_nodes"][f] else p["ns_ip"][f]
            port, proto = p["ns_port"][f], p["ns_proto"][f]
        elif kind == K.K_LOCALHOST:
            c = below(u[K.S_SRC], n_cli)
            src, dst = p["cli_ip"][c], K.LOCALHOST
            if u[K.S_A] < mix.localhost_listening and p["cli_pcount"][c] > 0:
                k = p["cli_pstart"][c] + below(u[K.S_B], p["cli_pcount"][c])
                port, proto = p["cli_port"][k], p["cli_proto"][k]
            else:
                port = 1024 + below(u[K.S_B], 64512)
                for t in range(K.REDRAWS):
                    if (src << 16) | port not in listen:
                        break
                    port = 1024 + below(u[K.S_REDRAW + t], 64512)
        elif kind == K.K_BY_NAME:
            c = below(u[K.S_SRC], n_cli)
            port = 80
            if (u[K.S_A] < mix.missing_names or not tables["nm"][0]) and len(p["missing_codes"]):
                code = p["missing_codes"][below(u[K.S_B], len(p["missing_codes"]))]
            else:
                e, _ = alias_draw(*tables["nm"], u[K.S_B])
                code, port, proto = p["nm_code"][e], p["nm_port"][e], p["nm_proto"][e]
                ns = p["nm_ns"][e]
                if ns >= 0:
                    c = p["ns_members"][p["ns_start"][ns] + below(u[K.S_C], p["ns_count"][ns])]
            src = p["cli_ip"][c]
        elif kind == K.K_EGRESS:
            src = p["cli_ip"][below(u[K.S_SRC], n_cli)]
            f, _ = alias_draw(*tables["egress"], u[K.S_A])
            dst = p["egress_ip"][f]
            x = u[K.S_B] * cum[-1]
            k = 0
            while k < len(cum) - 1 and cum[k] <= x:
                k += 1
            port, proto = S.EGRESS_PORTS[k][0], S.EGRESS_PORTS[k][1]
        else:
            src = p["cli_ip"][below(u[K.S_SRC], n_cli)]
            way = ways[below(u[K.S_A], len(ways))]
            if way == 0:
                cidr = below(u[K.S_B], len(p["cidr_net"]))
                net, room = p["cidr_net"][cidr], p["cidr_size"][cidr] - 2
                dst = net + 1 + below(u[K.S_C], room)
                for t in range(K.REDRAWS):
                    if dst not in pod_ips:
                        break
                    dst = net + 1 + below(u[K.S_REDRAW + t], room)
                port = 80
            else:
                dst = p["pp_ip"][below(u[K.S_B], n_pp)] if way == 1 else p["ci_addrs"][below(u[K.S_B], len(p["ci_addrs"]))]
                taken = listen if way == 1 else ci_keys
                port = 1 + below(u[K.S_C], 65535)
                for t in range(K.REDRAWS):
                    if (dst << 16) | port not in taken:
                        break
                    port = 1 + below(u[K.S_REDRAW + t], 65535)
        sport = K.EPHEMERAL_LO + below(u[K.S_SPORT], K.EPHEMERAL_HI - K.EPHEMERAL_LO + 1)
        gap = int(-math.log1p(-u[K.S_GAP]) * (1e9 / float(mix.rate)))
        z = normal_quantile(u[K.S_NORM])
        size = math.exp(z * mix.bytes_sigma + math.log(mix.bytes_median))
        if u[K.S_ELEPHANT] < mix.elephants:
            size = mix.elephant_min * (1.0 + math.expm1(-math.log1p(-u[K.S_PARETO]) / mix.elephant_alpha))
        nbytes = int(min(max(round(size), 1.0), 2.0 ** 62))
        packets = min((nbytes + K.MSS - 1) // K.MSS, 0xFFFFFFFF)
        life = None
        if mix.duration_mix:
            if proto == 17:
                life = -math.log1p(-u[K.S_LIFE]) * S.UDP_ONE_SHOT
            else:
                life = S.TCP_SCALE * (math.expm1(-math.log1p(-u[K.S_LIFE]) / S.TCP_ALPHA) + 1.0)
            if u[K.S_STREAM] < mix.long_lived:
                lo, hi = S.STREAM_RANGE
                life = lo + u[K.S_STREAM_LEN] * (hi - lo)
        out.append((src, dst, sport, port, proto, gap, code, nbytes, packets, life))
    return out
