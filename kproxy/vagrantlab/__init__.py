"""scripts/vagrant-test's parts: the Vagrant lab (vagrant/) booted on real VMs and checked.

run.py: phases bounded in time, commands in their own process groups, the summary;
host.py: packages, the local Debian box (mkbox.sh), libvirt on isolated networks, the apt proxy and
wheelhouse, `vagrant up`, and the teardown that puts the host back as it was;
checks.py: what the lab must show on real VMs (issue 17), asserted by what answered.
Standard library only: it runs on a host before any venv exists.
"""
