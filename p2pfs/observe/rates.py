"""Upload and download rates of the tracker's peers, derived from their PEER_STATS reports (running
totals): the rate is the change between a peer's last two reports over the time between them. Pure
bookkeeping; the tracker server feeds it, the dashboard reads it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from p2pfs.address import Address

#: A report older than this many seconds means the peer stopped moving bytes (peers report only while
#: their totals change, every REPORT_INTERVAL): its rates read 0 from then on.
STALE_AFTER = 3.5
#: Seconds between a peer's reports while its totals change (p2pfs.peer.node sends them).
REPORT_INTERVAL = 1.0


@dataclass
class Report:
    at: float
    uploaded: int
    downloaded: int
    #: bytes per second since the report before (None: this is the peer's first report)
    upload_rate: float | None = None
    download_rate: float | None = None


class PeerRates:
    """The last PEER_STATS report of each peer that sent one (peers that never do are simply absent)."""

    def __init__(self) -> None:
        self._last: dict[Address, Report] = {}

    def report(self, peer: Address, uploaded: int, downloaded: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        previous = self._last.get(peer)
        current = Report(now, uploaded, downloaded)
        if previous is not None and now > previous.at:
            elapsed = now - previous.at
            # (totals that went down mean the peer restarted: no rate from that pair)
            if uploaded >= previous.uploaded and downloaded >= previous.downloaded:
                current.upload_rate = (uploaded - previous.uploaded) / elapsed
                current.download_rate = (downloaded - previous.downloaded) / elapsed
        self._last[peer] = current

    def forget(self, peer: Address) -> None:
        self._last.pop(peer, None)

    def get(self, peer: Address, now: float | None = None) -> Report | None:
        """The peer's last report, its rates 0 if it is stale; None if it never reported."""
        report = self._last.get(peer)
        if report is None:
            return None
        now = time.monotonic() if now is None else now
        if now - report.at > STALE_AFTER:
            return Report(report.at, report.uploaded, report.downloaded, 0.0, 0.0)
        return report

    def __len__(self) -> int:
        return len(self._last)
