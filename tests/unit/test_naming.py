"""Names made from a pod (issue 12 #4): bounded, collision-free, unchanged when short."""
from __future__ import annotations

import itertools

from kproxy.node.naming import HOSTNAME_MAX, Naming, pod_hostname, pod_log_dir, pod_slug
from kproxy.store import manifests as folder

N = Naming("kp1a2b")
LONG_NS = "n" * 63
NAME_253 = "a" * 253
DEPLOY_230_POD = "d" * 230 + "-5d78c9869d-abcde"  # a 230-character Deployment's pod: 247 characters


def test_short_names_keep_their_readable_form():
    assert N.pod_netns("default", "web-5d78c9869d-abcde") == "kp1a2b-default-web-5d78c9869d-abcde"
    assert pod_log_dir("default", "web-1") == "default_web-1"
    assert pod_hostname({"metadata": {"name": "web-1"}, "spec": {}}) == "web-1"


def test_long_names_fit_every_limit():
    for ns, name in [("default", NAME_253), (LONG_NS, NAME_253), ("default", DEPLOY_230_POD), (LONG_NS, "x")]:
        netns = N.pod_netns(ns, name)
        assert len(netns) <= 63 and netns.startswith("kp1a2b-") and N.owns_netns(netns)
        assert "/" not in netns and len(f"/etc/netns/{netns}/resolv.conf") < 255
        assert len(pod_log_dir(ns, name)) <= 63
        assert netns.startswith(f"kp1a2b-{ns}-{name}"[:30])  # still readable in `ip netns list`


def test_different_long_names_never_collide():
    names = [NAME_253, NAME_253[:-1] + "b", DEPLOY_230_POD, DEPLOY_230_POD[:-1] + "f", "a" * 60, "a" * 61]
    pairs = list(itertools.product(["default", "kube-system", LONG_NS, LONG_NS[:-1] + "m"], names))
    for sep in "-_":
        slugs = [pod_slug(ns, name, sep) for ns, name in pairs]
        assert len(set(slugs)) == len(slugs)


def test_a_namespace_with_a_dash_cannot_be_read_two_ways():
    # `a-b`/`c` and `a`/`b-c` would both give `kp…-a-b-c`
    assert N.pod_netns("a-b", "c") != N.pod_netns("a", "b-c")
    # a hashed slug never equals a short one: the mark is in no Kubernetes name
    assert "~" in pod_slug("a-b", "c") and "~" not in pod_slug("a", "b-c")


def test_the_hostname_is_truncated_as_the_kubelet_does():
    pod = {"metadata": {"name": "x" * 62 + "-abc"}, "spec": {}}
    assert pod_hostname(pod) == "x" * 62  # 63 characters, then no trailing dash
    assert len(pod_hostname({"metadata": {"name": NAME_253}, "spec": {}})) == HOSTNAME_MAX
    assert pod_hostname({"metadata": {"name": NAME_253}, "spec": {"hostname": "db"}}) == "db"


def test_apply_writes_a_253_character_pod_to_the_folder(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": NAME_253, "namespace": "default"},
           "spec": {"containers": [{"name": "c"}]}}
    assert folder.upsert(tmp_path, pod) == "created"
    other = {**pod, "metadata": {"name": NAME_253[:-1] + "b", "namespace": "default"}}
    assert folder.upsert(tmp_path, other) == "created"
    assert folder.find(tmp_path, ("Pod", "default", NAME_253)) == pod
    assert len(list(tmp_path.glob("*.yaml"))) == 2
