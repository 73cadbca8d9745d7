"""The plain-language lines `explain` and `trace` print for kube-proxy's rules, one per concept.

Both proxy modes program the same ideas (hairpin masquerade, ETP Local, session affinity, ...)
in different syntax: explain.py reads iptables-save rules, nftview.py reads `nft list table`.
Each renderer recognises its own syntax, and both take the words from here, so a concept reads
the same in both modes and a rewording is made once. `{...}` fields are what the renderer read
from the rule (a chain name in the mode's own spelling, an address, a Service's name).
"""
from __future__ import annotations

SAY = {
    # the hooks into kube-proxy's fixed chains
    "portals": "every packet passes the Service portals ({chain})",
    "postrouting": "on the way out: kube-proxy's masquerade check ({chain})",
    # a Service that cannot be served: what the client sees
    "no endpoints": "{service} has no endpoints: {how} (the client sees 'connection refused')",
    "etp local, no local endpoint": ("{service} has externalTrafficPolicy Local and no endpoint on this node: "
                                     "{how} (the client times out)"),
    "source ranges drop": "{service}: the source is not in loadBalancerSourceRanges, so the packet is dropped",
    # the masquerade mark: who gets it and why
    "hairpin masquerade": ("hairpin: when the pod {pod} is itself the client, mark for masquerade so the reply "
                           "comes back through the node"),
    "outside cluster CIDR masquerade": ("a client outside the cluster CIDR {cidr} is marked for masquerade "
                                        "(the reply must come back through this node)"),
    "local external masquerade": "the node's own traffic to an external address is marked for masquerade",
    "external masquerade": ("externalTrafficPolicy Cluster: external traffic is marked for masquerade (the endpoint "
                            "may be on another node; the reply must come back through this one)"),
    "masquerade mark": "marked for masquerade",
    "set masquerade mark": "sets the masquerade mark ({chain} will SNAT the packet)",
    "clear masquerade mark": "clears the masquerade mark",
    "not masqueraded": "not marked for masquerade: the source address is kept",
    "masquerade": "masquerade: the source becomes this node's address on the outgoing interface",
    # the external-traffic chain: which endpoints serve
    "short-circuit pod traffic": ("pods reaching an external address use every endpoint, as if they went out and "
                                  "came back"),
    "short-circuit local traffic": "the node's own traffic uses every endpoint",
    "etp local": "externalTrafficPolicy Local: only this node's endpoints, the client's address is kept",
    "etp cluster": "then to the Service's endpoints ({chain})",
    # the endpoint
    "affinity": "session affinity: a client seen {when} goes back to {endpoint}",
    "dnat": "DNAT: the destination becomes {endpoint}",
}


def say(concept: str, **fields: object) -> str:
    """The line for `concept` (a key of SAY) with the rule's own values filled in."""
    return SAY[concept].format(**fields)
