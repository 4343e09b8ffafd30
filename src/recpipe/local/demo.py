"""The main job: built-in data -> local pipeline -> pushed model served by KServe -> queries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from recpipe.core import storage
from recpipe.events.contract import ITEM, USER
from recpipe.events.sample import generate_events, generate_item_attributes
from recpipe.features.sequences import order_events
from recpipe.local.runner import run_training
from recpipe.pipelines.config import PipelineConfig
from recpipe.serving.local_server import LocalServer
from recpipe.training.config import TrainConfig

DEMO_TRAINING = TrainConfig(max_epochs=25, patience=5)


def run_demo(
    output: Path,
    data: str | None = None,
    config: PipelineConfig | None = None,
    users_to_show: int = 3,
    item_attributes: str | None = None,
) -> None:
    t0 = time.monotonic()
    output.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = PipelineConfig(training=DEMO_TRAINING)
    if data is None:
        data = str(output / "data" / "events.csv")
        Path(data).parent.mkdir(parents=True, exist_ok=True)
        generate_events().to_csv(data, index=False)
        catalogue = output / "data" / "item_attributes.json"
        catalogue.write_text(json.dumps(generate_item_attributes()), encoding="utf-8")
        print(f"[demo] wrote the built-in sample events to {data}, its catalogue to {catalogue}")
        if item_attributes is None and config.features.item_attributes_uri is None:
            item_attributes = str(catalogue)
    if item_attributes is not None:
        config = config.with_item_attributes(item_attributes)
    print(
        "[demo] running training_pipeline with kfp.local (validate -> features -> train "
        "-> evaluate -> push -> deploy manifest)"
    )
    run = run_training(data, output, config)
    print(f"[demo] pipeline finished in {run.seconds:.0f}s")
    if not run.production_version:
        print("[demo] the model was not blessed: nothing to serve")
        return
    model_uri = storage.join(run.registry_uri, run.model_name)
    events = order_events(pd.read_csv(data, dtype={USER: str, ITEM: str}))
    histories = events.groupby(USER, sort=False)[ITEM].agg(list).head(users_to_show)
    with LocalServer(model_uri) as server:
        print(f"[demo] KServe ModelServer serving {model_uri} at {server.url}")
        for user, history in histories.items():
            status, body = server.predict([{"history": history[-20:], "k": 5}])
            pred = body["predictions"][0] if status == 200 else body
            print(
                f"[demo] user {user}: last items {history[-3:]} -> "
                f"recommended {json.dumps(pred.get('items', pred))}"
            )
    print(f"[demo] server stopped; total {time.monotonic() - t0:.0f}s; outputs in {output}")
