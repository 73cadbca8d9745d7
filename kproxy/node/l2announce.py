"""Layer-2 announcement of LoadBalancer IPs with scapy, as MetalLB's speaker does it.

The node answers ARP requests for the IPs it announces with the MAC of its node-network link,
and sends a gratuitous ARP when it starts announcing one, so clients on that network send
traffic for the IP to this node without any configuration. The kernel never owns these IPs:
kube-proxy's rules catch the packets in PREROUTING.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, iface: str):
        self.iface = iface
        self.ips: set[str] = set()
        self._lock = threading.Lock()
        self._sniffer = None
        self.mac: str | None = None

    def _start(self) -> None:
        from scapy.all import AsyncSniffer, get_if_hwaddr  # scapy loads in ~1 s: only when needed
        self.mac = get_if_hwaddr(self.iface)
        self._sniffer = AsyncSniffer(iface=self.iface, filter="arp and arp[6:2] = 1", store=False,
                                     prn=self._on_request)
        self._sniffer.start()

    def set_ips(self, ips: set[str]) -> None:
        """Announce exactly `ips` from now on (gratuitous ARP for the new ones)."""
        with self._lock:
            new = set(ips) - self.ips
            self.ips = set(ips)
        if self.ips and self._sniffer is None:
            self._start()
        for ip in sorted(new):
            self._gratuitous(ip)

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
        if self._sniffer is not None:
            try:
                self._sniffer.stop()
            except Exception:  # noqa: BLE001 - stopping a sniffer whose socket is gone
                pass
            self._sniffer = None
