"""The sweep meets every company Lime changed since the last sweep, even while other
writes reorder Lime's list under it (docs/lime-to-bfus.md, "The sweep")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandbox.stack import Stack, wait_for
from shared.bfus import BfusClient
from shared.lime import LimeClient
from shared.limeevents import customer_keys
from shared.limemeta import check_against_lime
from shared.topology import Topology
from worker.outbound import Outbound
from worker.sweep import PAGE, Sweep


class RewritingLime(LimeClient):
    """Lime while BFUS's stream rewrites companies: after the sweep's first page, the
    first company on it is written again, so it moves to the end of Lime's
    ``_timestamp`` order and every company behind it moves up one place."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pages = 0

    def list_page(self, limetype: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        page, next_url = super().list_page(limetype, params)
        self.pages += 1
        if self.pages == 1 and page:
            self.update(limetype, page[0]["_id"], {"phone": "+4686660000"})
        return page, next_url


def test_a_company_behind_a_page_boundary_is_swept_while_lime_rewrites_the_list(
        make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4, outbound=True).start(workers=1)  # no webhooks: only the sweep sends
    store = stack.lime.store
    for i in range(PAGE):
        store.create("company", {"name": f"Prospekt {i} AB", "customertype": "company"})
    marked = store.create("company", {"name": "Kvarnbackens Bageri AB", "customertype": "company",
                                      "registrationno": "556036-0793", "postaladdress1": "Kvarnvägen 3",
                                      "postalzipcode": "22350", "postalcity": "Lund", "sendtobfus": True})
    for i in range(PAGE // 2):
        store.create("company", {"name": f"Prospekt {PAGE + i} AB", "customertype": "company"})
    config = stack.config
    lime = RewritingLime(config.lime)
    outbound = Outbound(lime, BfusClient(config.bfus), check_against_lime(config, lime.limetypes())["customer"],
                        config.outbound.create_when)
    publisher = stack.receiver_app.extensions["publisher"]
    sweep = Sweep(lime, publisher, Topology.from_config(config.broker), outbound, customer_keys(config.mapping))

    assert sweep.once() == 1  # the marked company, first on the second page until the rewrite moved it up
    wait_for(lambda: store.get("company", marked["_id"]).get("customerno"), 30, "the swept company in BFUS")
    stack.wait_quiet()  # BFUS's own message about the new customer is in Lime too
    assert stack.bfus.writes == {"POST": 1, "PUT": 0}
    assert sweep.once() == 0  # swept again: nothing new to send
