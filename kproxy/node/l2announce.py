"""Layer-2 announcement of LoadBalancer IPs with scapy, as MetalLB's speaker does it.

The node answers ARP requests for the IPs it announces with the MAC of its node-network link,
and sends a gratuitous ARP when it starts announcing one, so clients on that network send
traffic for the IP to this node without any configuration. The kernel never owns these IPs:
kube-proxy's rules catch the packets in PREROUTING.

All scapy work happens in `run`, which the daemon runs as a supervised thread: when it fails
(no libpcap to compile the ARP filter, the link gone) the failure is logged, reported
(`AnnouncerFailed`, `kproxy status`) and `run` starts again, instead of a sniffer thread dying
without a word while LoadBalancer IPs never answer ARP.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

ARP_REQUESTS = "arp and arp[6:2] = 1"
SNIFF_SLICE = 0.5  # seconds per sniff: how soon a new IP's gratuitous ARP goes out, and a stop is seen


class Announcer:
    def __init__(self, iface: str):
        self.iface = iface
        self.ips: set[str] = set()
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # IPs that want a gratuitous ARP
        self._stop = threading.Event()
        self.mac: str | None = None

    def set_ips(self, ips: set[str]) -> None:
        """Announce exactly `ips` from now on (gratuitous ARP for the new ones, sent by `run`)."""
        with self._lock:
            self._pending |= set(ips) - self.ips
            self._pending &= set(ips)
            self.ips = set(ips)

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Answer ARP for the announced IPs until `stop`; raises what keeps it from doing so.
        `ready()` is called once the ARP filter is compiled and the socket is open."""
        from scapy.all import conf, get_if_hwaddr, sniff  # scapy loads in ~1 s: only when needed
        self.mac = get_if_hwaddr(self.iface)
        with self._lock:
            self._pending |= self.ips  # (again) after a restart: clients may have lost us
        sock = conf.L2listen(iface=self.iface, filter=ARP_REQUESTS)  # libpcap compiles the filter
        try:
            if ready is not None:
                ready()
            while not self._stop.is_set():
                with self._lock:
                    new, self._pending = sorted(self._pending), set()
                for ip in new:
                    self._gratuitous(ip)
                sniff(opened_socket=sock, timeout=SNIFF_SLICE, store=False, prn=self._on_request)
                if getattr(sock, "closed", False):  # sniff closes a socket that failed
                    raise OSError(f"the ARP socket on {self.iface} failed (see the log)")
        finally:
            sock.close()

    def _on_request(self, pkt) -> None:
        from scapy.all import ARP, Ether, sendp
        arp = pkt.getlayer(ARP)
        if arp is None or arp.op != 1:
            return
        with self._lock:
            if arp.pdst not in self.ips:
                return
        reply = Ether(dst=arp.hwsrc, src=self.mac) / ARP(op=2, hwsrc=self.mac, psrc=arp.pdst,
                                                         hwdst=arp.hwsrc, pdst=arp.psrc)
        sendp(reply, iface=self.iface, verbose=False)

    def _gratuitous(self, ip: str) -> None:
        from scapy.all import ARP, Ether, sendp
        pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src=self.mac) / ARP(
            op=2, hwsrc=self.mac, psrc=ip, hwdst="ff:ff:ff:ff:ff:ff", pdst=ip)
        sendp(pkt, iface=self.iface, verbose=False)

    def stop(self) -> None:
        self._stop.set()
