"""kube-proxy's nftables mode: the ruleset upstream's nftables proxier writes, from kproxy's digest.

names.py  chain/set names hashed as upstream (service-, external-, endpoint-, affinity-, ...)
table.py  the table being built, dumped as upstream's test fake dumps it or as a loadable transaction
base.py   the fixed sets, maps, base chains and their rules (upstream's setupNFTables)
services.py  what one service port adds (upstream's syncProxyRules loop body)
render.py the entry point: digest in, `add table/set/map/chain/rule/element` lines out; each
          Service rendered on its own (a ServicePiece), the table their composition
syncer.py keeps the kernel's table in step: full and partial syncs as upstream's, stale chains
          deleted after upstream's grace (the proxy role's NftSyncer)
kernel.py the `nft` runner, the table's listing and removal, NftError
listing.py one Service's part of `nft list table` (`kproxy rules svc/NAME`)
"""
