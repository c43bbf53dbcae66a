"""A discrete-event simulation of a p2pfs swarm (issue 12), to plan past the 17 processes this machine
runs with meaning: `python -m bench.sim.run` (`make sim`).

The model is fluid per chunk. Every holder -> downloader connection answers its requests in order, one
chunk at a time, and the chunk being sent is a flow on the holder's uplink, which is shared equally by
all the flows on it (processor sharing, bench.sim.engine.Link); events scale with chunks x peers, not
bytes. Downlinks are unconstrained. Every message has a one-way delay, plus the shaper's queue delay
(tbf `latency`, 50 ms in bench/netns.py) when it leaves a host whose uplink is busy; a link's payload
rate is its nominal rate x 1448/1514 (headers), while the Kumar-Ross bound uses the nominal rates, as
`make swarm` does.

What runs is the real code's decisions: the downloaders (bench.sim.swarm.Downloader) follow
p2pfs.peer.transfer.Download step by step with the real Picker, choose_holders, ThroughputMeter,
initial_window and request_window, MAX_HOLDERS and MAX_CANDIDATES, the refresh schedule and pushed
updates; the publisher answers substitute requests with the real SuperSeeder, deciding when a reply
starts (chunk_server drains each reply before reading the next request). The tracker keeps the registry,
answers REPLY_FILE_LOCATION with every holder's runs and pushes updates after PUSH_DELAY +
PUSH_DELAY_PER_WATCHER per watcher (tracker/server.py's constants); its work is one queue costing
17 us a message (bench 6's echo rate) plus assumed per-holder and per-byte costs, and its frames leave
on its host's uplink (its own, unshaped, or the seeder's). Message sizes are those of real encoded
messages.

What it ignores: TCP (slow start, losses, unfairness between flows), CPU and disks of the peers
(hashing is instant unless verify_rate is set), failures, timeouts, bans and the "cannot progress"
path (no holder ever leaves), collections and rate limits. A candidate's chunks are read from the
tracker's registry when it is ranked, so a downloader knows them up to one refresh sooner than it would.
"""
