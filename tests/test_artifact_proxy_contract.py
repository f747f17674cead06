"""The server's artifact proxy on the one-URI server gives what a stock MLflow server gives.

The same client (a fresh process that knows only the server's address) talks to two servers:
stock MLflow (``--backend-store-uri postgresql+psycopg://…``, artifacts proxied to ``./mlartifacts``)
and ``mlflow server --backend-store-uri pgmodels://…`` (artifacts in the database). It goes through
what MLflow's tests/tracking/test_mlflow_artifacts.py checks: the ``mlflow-artifacts`` REST API
(upload, download, list), ``log_artifact(s)``, ``list_artifacts``, ``download_artifacts``,
``/get-artifact`` (content, MIME types, ``Content-Disposition``, ``nosniff``), ``log_image`` and
``/model-versions/get-artifact``, and prints what it saw; both outputs must be equal.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_database
from tests.mlflow_server import mlflow_server, run_client

CLIENT = r"""
import io, json, os, sys, tempfile
import mlflow
import numpy as np
import requests
from PIL import Image

url = os.environ["MLFLOW_TRACKING_URI"]
proxy = f"{url}/api/2.0/mlflow-artifacts/artifacts"
seen = {}
work = tempfile.mkdtemp()

def headers(response):
    return {k: response.headers.get(k) for k in ("Content-Type", "Content-Disposition", "X-Content-Type-Options")}

# the mlflow-artifacts REST API: upload, download, list
for path, body in (("contract/a.txt", b"0"), ("contract/dir/b.txt", b"1")):
    requests.put(f"{proxy}/{path}", data=body).raise_for_status()
seen["proxy_download"] = [(requests.get(f"{proxy}/{p}").text, headers(requests.get(f"{proxy}/{p}")))
                          for p in ("contract/a.txt", "contract/dir/b.txt")]
seen["proxy_list"] = [requests.get(proxy, params={"path": p}).json() for p in ("contract", "contract/dir", "contract/none")]
seen["proxy_missing"] = requests.get(f"{proxy}/contract/none.txt").status_code

# MIME types, whatever type the upload claimed
for name in ("a.txt", "b.pkl", "c.png", "d.pdf", "MLmodel", "mlproject"):
    requests.put(f"{proxy}/contract/mime/{name}", data=b"", headers={"Content-Type": "text/html"}).raise_for_status()
    seen[f"proxy_mime_{name}"] = headers(requests.get(f"{proxy}/contract/mime/{name}"))

# runs: log, list, download, get-artifact
mlflow.set_experiment("contract")
for name, text in (("a.txt", "0"), ("b.txt", "1")):
    with open(os.path.join(work, name), "w") as f:
        f.write(text)
client = mlflow.MlflowClient()
with mlflow.start_run() as run:
    seen["empty_run"] = client.list_artifacts(run.info.run_id)
    mlflow.log_artifact(os.path.join(work, "a.txt"))
    mlflow.log_artifact(os.path.join(work, "b.txt"), "dir")
    mlflow.log_artifacts(work, artifact_path="all")
    for name in ("c.png", "d.pdf", "MLmodel", "mlproject", "e.pkl"):
        mlflow.log_text("", f"mime/{name}")
    mlflow.log_image(np.random.default_rng(0).integers(0, 256, size=(20, 20, 3), dtype=np.uint8),
                     key="dog", step=20, timestamp=100, synchronous=True)
run_id = run.info.run_id
seen["listed"] = {p: [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, p)]
                  for p in (None, "dir", "all", "mime", "none")}
rest = f"{url}/api/2.0/mlflow/artifacts/list"
for path in (None, "dir"):
    answer = requests.get(rest, params={"run_id": run_id, **({"path": path} if path else {})}).json()
    seen[f"rest_list_{path}"] = (answer["files"], answer.get("root_uri") == run.info.artifact_uri)
whole = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=os.path.join(work, "whole"))
seen["downloaded"] = sorted(os.path.relpath(os.path.join(top, n), whole).replace(os.sep, "/")
                            for top, _, names in os.walk(whole) for n in names if "dog" not in n)
seen["downloaded_dir"] = os.listdir(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dir"))
for name in ("a.txt", "dir/b.txt", "mime/c.png", "mime/d.pdf", "mime/MLmodel", "mime/mlproject", "mime/e.pkl"):
    response = requests.get(f"{url}/get-artifact", params={"run_id": run_id, "path": name})
    seen[f"get_artifact_{name}"] = (response.status_code, response.text, headers(response))
seen["get_artifact_missing"] = requests.get(f"{url}/get-artifact", params={"run_id": run_id, "path": "nope.txt"}).status_code
seen["get_artifact_escape"] = requests.get(f"{url}/get-artifact", params={"run_id": run_id, "path": "../x"}).status_code

# log_image: the files MLflow writes for a logged image step, served with their names
images = requests.get(f"{url}/ajax-api/2.0/mlflow/artifacts/list", params={"path": "images", "run_id": run_id}).json()
seen["images"] = []
for f in images["files"]:
    response = requests.get(f"{url}/get-artifact", params={"run_id": run_id, "path": f["path"]})
    same = None
    if f["path"].endswith(".png"):
        logged = np.random.default_rng(0).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
        same = bool((np.asarray(Image.open(io.BytesIO(response.content))) == logged).all())
    seen["images"].append((f["path"].rsplit(".", 1)[-1], f["is_dir"],
                           "attachment; filename=dog+step+20+timestamp+100" in response.headers["Content-Disposition"],
                           response.headers["Content-Type"], same))
seen["images"].sort()

# a registered model's files through /model-versions/get-artifact
from sklearn.linear_model import LinearRegression
model = LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0])
with mlflow.start_run():
    mlflow.sklearn.log_model(model, name="model", registered_model_name="contract-model", pip_requirements=["scikit-learn"])
response = requests.get(f"{url}/model-versions/get-artifact", params={"name": "contract-model", "version": "1", "path": "MLmodel"})
seen["model_version_artifact"] = (response.status_code, "flavors:" in response.text, headers(response)["Content-Type"])
seen["model_version_missing"] = requests.get(f"{url}/model-versions/get-artifact",
                                             params={"name": "contract-model", "version": "1", "path": "nope"}).status_code
seen["model_loaded"] = mlflow.pyfunc.load_model("models:/contract-model/1").predict(np.array([[3.0]])).tolist()
print(json.dumps(seen, default=str))
"""


@pytest.mark.slow  # two servers, two client processes: about two minutes
def test_the_artifact_proxy_answers_like_a_stock_mlflow_server(pg, db, tmp_path):
    stock_db = make_database(pg)
    stock_uri = pg.socket_uri(stock_db.name, scheme="postgresql+psycopg")
    seen = {}
    try:
        for name, uri in (("stock", stock_uri), ("ours", db.uri)):
            with mlflow_server(tmp_path / name / "server", uri) as server:
                output = run_client(server.url, tmp_path / name, CLIENT)
                assert server.failures() == [], server.log()[-5000:]
            seen[name] = json.loads(output.splitlines()[-1])
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {stock_db.name} WITH (FORCE)")

    assert (tmp_path / "stock" / "server" / "mlartifacts").is_dir()  # stock: files on the server's disk
    assert not (tmp_path / "ours" / "server" / "mlartifacts").exists()  # ours: in the database
    assert db.sql("SELECT count(*) FROM pgm_artifacts WHERE path LIKE %s", ("contract/%",)) == [(8,)]
    ours = seen["ours"]  # what MLflow's own tests expect of a server, so that both cannot be equally wrong
    assert ours["get_artifact_a.txt"][:2] == [200, "0"]
    assert ours["get_artifact_a.txt"][2]["X-Content-Type-Options"] == "nosniff"
    assert {name: ours[f"proxy_mime_{name}"]["Content-Type"] for name in ("a.txt", "b.pkl", "c.png", "d.pdf")} == {
        "a.txt": "text/plain", "b.pkl": "application/octet-stream", "c.png": "image/png", "d.pdf": "application/pdf"}
    assert ["png", False, True, "image/png", True] in ours["images"]
    assert ours["model_version_artifact"] == [200, True, "text/plain"]
    assert ours["model_loaded"] == pytest.approx([6.0])
    differences = {key: {"stock": stock, "ours": seen["ours"].get(key)}
                   for key, stock in seen["stock"].items() if seen["ours"].get(key) != stock}
    assert differences == {}
