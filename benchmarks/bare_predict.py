"""The bare predict endpoint bench_predict.py measures driftd against: the model and nothing else.

A FastAPI app on the stack driftd runs on (uvicorn, httptools, uvloop) whose one route parses
``{"instances": [{feature: value}, ...]}`` with pydantic, predicts with the joblib-dumped model
given on the command line and answers ``{"predictions": [...]}``: no storage, no monitoring, no
ids. The route is ``async def``, so the model runs on the event loop with no thread hop, the
fastest a FastAPI endpoint serves a model this cheap.

Run by bench_predict.py:  python benchmarks/bare_predict.py MODEL.joblib PORT
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    instances: list[dict[str, float]]


def create_app(model: Any, columns: list[str]) -> FastAPI:
    """One ``POST /predict`` over ``model``, its input columns in ``columns``' order."""
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: PredictRequest) -> dict[str, list[Any]]:
        X = np.array([[row[c] for c in columns] for row in body.instances], dtype=np.float64)
        return {"predictions": model.predict(X).tolist()}

    return app


def main() -> None:
    model = joblib.load(sys.argv[1])
    columns = [f"f{i}" for i in range(model.n_features_in_)]
    uvicorn.run(
        create_app(model, columns),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
