"""Amazon 2018/2023 converters end to end through ``vlm2rec.cli.main`` on small fixture files."""

from __future__ import annotations

import functools
import gzip
import io
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from vlm2rec.cli import main
from vlm2rec.data.amazon import parse_item_2018, parse_item_2023
from vlm2rec.data.convert_common import ConversionError
from vlm2rec.data.schema import read_dataset

URL = "http://127.0.0.1:9"  # never contacted: the tests run with --no-download


def _write(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, format="JPEG")
    return out.getvalue()


META_2018 = [
    json.dumps(
        {
            "asin": "A1",
            "title": "Caf&eacute; Mug &amp;amp; Saucer",  # escaped twice, as in the release
            "brand": "Acme",
            "category": ["Home", "Kitchen"],
            "description": ["Big <b>mug</b>,", "fine\n china"],
            "imageURLHighRes": [f"{URL}/A1.jpg"],
        }
    ),
    str({"asin": "A2", "title": "Théière  — 日本", "description": [], "imageURL": [f"{URL}/A2"]}),
    json.dumps({"asin": "A3", "title": "  Spoon \t set "}),
    json.dumps({"asin": "A4", "title": "   "}),  # no usable title
    "{not json at all",
    json.dumps({"title": "no asin"}),
    json.dumps({"asin": "A5", "title": "Plate", "image": f"{URL}/A5.jpg"}),
    json.dumps({"asin": "A1", "title": "a later re-crawl of A1"}),
]


def _review(user: str, item: str, t: object) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "overall": 5.0})


REVIEWS_2018 = [
    _review("U1", "A1", 100),
    _review("U1", "A2", 200),
    _review("U1", "A3", 300),
    _review("U1", "A1", 100),  # duplicate (same user, item, time)
    _review("U1", "A5", 50),
    _review("U2", "A3", 10),  # tie with the next line: file order must win over item id
    _review("U2", "A2", 10),
    _review("U2", "A1", 5),
    _review("U3", "A1", 1),  # a user with one interaction: dropped by --min-length 3
    _review("U1", "A2", "yesterday"),
    json.dumps({"reviewerID": "U2", "unixReviewTime": 3}),
    _review("U2", "ZZZ", 7),  # no metadata
    _review("U2", "A4", 8),  # metadata without title
]


@pytest.fixture()
def files_2018(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    images.mkdir()
    (images / "A1.jpg").write_bytes(_jpeg((250, 0, 0)))
    (images / "A5.jpg").write_bytes(b"this is not a jpeg")
    return {
        "meta": _write(tmp_path / "meta_Kitchen.json.gz", META_2018),
        "reviews": _write(tmp_path / "Kitchen.json", REVIEWS_2018),
        "images": images,
    }


def _prepare_2018(files: dict[str, Path], out: Path, *extra: str) -> int:
    args = ["prepare", "amazon2018", "--meta", str(files["meta"]), "--reviews"]
    args += [str(files["reviews"]), "--out", str(out), "--images", str(files["images"])]
    return main([*args, "--no-download", "--k-core", "0", *extra])


def test_amazon2018_end_to_end(files_2018: dict[str, Path], tmp_path: Path) -> None:
    assert _prepare_2018(files_2018, tmp_path / "out") == 0
    ds = read_dataset(tmp_path / "out")
    items = ds.items.to_pylist()
    assert [r["source_id"] for r in items] == ["A1", "A2", "A3", "A5"]  # sorted, dense 1..4
    assert [r["title"] for r in items] == [
        "Café Mug & Saucer",
        "Théière — 日本",
        "Spoon set",
        "Plate",
    ]
    assert (
        items[0]["text"]
        == "Brand: Acme\nCategory: Home > Kitchen\nDescription: Big mug , fine china"
    )
    assert [r["text"] is None for r in items] == [False, True, True, True]
    with Image.open(io.BytesIO(items[0]["image"])) as img:
        assert img.format == "JPEG"
        assert img.convert("RGB").getpixel((5, 5))[0] > 200  # type: ignore[index]
    assert [r["image"] is None for r in items] == [False, True, True, True]

    rows = ds.interactions.to_pylist()
    assert [(r["user_id"], r["item_id"], r["timestamp"]) for r in rows] == [
        (0, 4, 50), (0, 1, 100), (0, 2, 200), (0, 3, 300),  # U1, duplicate collapsed
        (1, 1, 5), (1, 3, 10), (1, 2, 10),  # U2: the tie keeps file order (A3 before A2)
    ]  # fmt: skip
    meta = ds.meta
    assert meta["name"] == "amazon2018-Kitchen"
    assert meta["dropped"] == {
        "bad_json": 1,
        "bad_timestamp": 1,
        "duplicate_interaction": 1,
        "duplicate_item": 1,
        "item_no_title": 1,
        "missing_field": 2,
        "short_user": 1,
        "unknown_item": 2,
    }
    assert meta["image_failures"] == {"download_disabled": 1, "no_reference": 1, "undecodable": 1}
    assert meta["items_without_image"] == 3 and meta["items_without_text"] == 3
    assert "meta_Kitchen.json.gz:5" in meta["malformed_examples"]["bad_json"]


def test_amazon2018_is_deterministic(files_2018: dict[str, Path], tmp_path: Path) -> None:
    _prepare_2018(files_2018, tmp_path / "a")
    _prepare_2018(files_2018, tmp_path / "b")
    assert read_dataset(tmp_path / "a").fingerprint == read_dataset(tmp_path / "b").fingerprint


def test_strict_names_file_and_line(files_2018: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"meta_Kitchen\.json\.gz:5: bad_json"):
        _prepare_2018(files_2018, tmp_path / "out", "--strict")


def test_kcore_and_min_length_options(files_2018: dict[str, Path], tmp_path: Path) -> None:
    # 2-core: A5 (one interaction) goes, then U3 (only A1) is already gone, A1..A3 stay.
    _prepare_2018(files_2018, tmp_path / "out", "--k-core", "2", "--min-length", "2")
    ds = read_dataset(tmp_path / "out")
    assert ds.items.column("source_id").to_pylist() == ["A1", "A2", "A3"]
    assert ds.interactions.num_rows == 6
    assert ds.meta["dropped"]["k_core"] == 2  # U1-A5 and U3-A1
    assert ds.meta["k_core"] == 2 and ds.meta["min_length"] == 2
    with pytest.raises(ConversionError, match="no interactions left"):
        _prepare_2018(files_2018, tmp_path / "none", "--k-core", "9")


def test_amazon2018_ratings_csv(files_2018: dict[str, Path], tmp_path: Path) -> None:
    lines = ["A1,U1,5.0,100", "A2,U1,4.0,200", "A3,U1,1.0,300", "A2,U2,3.0,1", "bad,row"]
    files = {**files_2018, "reviews": _write(tmp_path / "Kitchen.csv.gz", lines)}
    _prepare_2018(files, tmp_path / "out", "--min-length", "1")
    ds = read_dataset(tmp_path / "out")
    pairs = [(r["user_id"], r["item_id"]) for r in ds.interactions.to_pylist()]
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 2)]
    assert ds.meta["dropped"]["bad_csv_row"] == 1


META_2023 = [
    json.dumps(
        {
            "parent_asin": "P2",
            "title": "Lamp &quot;Nova&quot;",
            "store": "Lumo",
            "features": ["LED", "Dimmable"],
            "description": ["Warm light."],
            "details": {"Material": "Steel", "Colour": "Black"},
            "categories": ["Home", "Lighting"],
            "images": [
                {"variant": "PT01", "hi_res": f"{URL}/p2-side.jpg", "large": None, "thumb": None},
                {"variant": "MAIN", "hi_res": None, "large": f"{URL}/p2-main.jpg", "thumb": None},
            ],
        }
    ),
    json.dumps({"parent_asin": "P1", "title": "Desk", "images": [], "description": []}),
    json.dumps({"parent_asin": "P3", "title": "Chair"}),
    "[1, 2, 3]",
]
REVIEWS_2023 = [
    json.dumps({"user_id": "AE1", "parent_asin": p, "asin": "x", "timestamp": t, "rating": 5})
    for p, t in [("P1", 1_600_000_000_123), ("P2", 1_600_000_000_456), ("P3", 1_600_000_000_001)]
]


def test_amazon2023_end_to_end(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "P2.png").write_bytes(_jpeg((0, 0, 250)))  # content sniffed, not the extension
    meta = _write(tmp_path / "meta_Home.jsonl", META_2023)
    reviews = _write(tmp_path / "Home.jsonl.gz", [*REVIEWS_2023, REVIEWS_2023[0]])
    args = ["prepare", "amazon2023", "--meta", str(meta), "--reviews", str(reviews)]
    args += [
        "--out",
        str(tmp_path / "o"),
        "--images",
        str(images),
        "--no-download",
        "--k-core",
        "0",
    ]
    assert main(args) == 0
    ds = read_dataset(tmp_path / "o")
    items = ds.items.to_pylist()
    assert [r["source_id"] for r in items] == ["P1", "P2", "P3"]
    assert items[1]["title"] == 'Lamp "Nova"'
    assert items[1]["text"] == (
        "Store: Lumo\nCategory: Home > Lighting\nFeatures: LED; Dimmable\n"
        "Description: Warm light.\nDetails: Material: Steel; Colour: Black"
    )
    assert [r["image"] is not None for r in items] == [False, True, False]
    rows = ds.interactions.to_pylist()
    assert [r["item_id"] for r in rows] == [3, 1, 2]
    assert [r["timestamp"] for r in rows] == [
        1_600_000_000_001,
        1_600_000_000_123,
        1_600_000_000_456,
    ]
    assert ds.meta["timestamp_unit"] == "ms" and ds.meta["name"] == "amazon2023-Home"
    assert ds.meta["dropped"] == {"bad_json": 1, "duplicate_interaction": 1}


def test_parse_item_image_choice() -> None:
    _, item = parse_item_2023(json.loads(META_2023[0]))
    assert item is not None and item.image == f"{URL}/p2-main.jpg"  # MAIN first, large if no hi_res
    columnar = {"title": "T", "parent_asin": "Q", "images": {"variant": ["PT01", "MAIN"],
                "hi_res": ["h1", "h2"], "large": ["l1", "l2"]}}  # fmt: skip
    assert parse_item_2023(columnar)[1] == parse_item_2023({**columnar, "images": [
        {"variant": "MAIN", "hi_res": "h2"}]})[1]  # fmt: skip
    assert parse_item_2018({"asin": "X", "title": "t", "imageURL": ["", "u2"]})[1] is not None
    assert parse_item_2018({"asin": "X", "title": "t", "imageURL": ["", "u2"]})[1].image == "u2"  # type: ignore[union-attr]
    assert parse_item_2018({"asin": "X"}) == ("X", None)
    assert parse_item_2018({"title": "t"}) == (None, None)


def test_images_downloaded_once_into_out_cache(
    files_2018: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    served = tmp_path / "served"
    served.mkdir()
    (served / "A1.jpg").write_bytes(_jpeg((0, 250, 0)))  # A5.jpg is absent: the server says 404
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        meta = [line.replace(URL, base) for line in META_2018]
        files = {"meta": _write(tmp_path / "meta_K.json", meta), "reviews": files_2018["reviews"]}
        args = ["prepare", "amazon2018", "--meta", str(files["meta"]), "--reviews"]
        args += [str(files["reviews"]), "--out", str(tmp_path / "out"), "--k-core", "0"]
        assert main([*args, "--image-retries", "0", "--image-timeout", "2"]) == 0
        images = read_dataset(tmp_path / "out").items.column("image").to_pylist()
        (served / "A1.jpg").unlink()  # a second run must not need the server for A1
        assert (
            main(
                [
                    *args,
                    "--out",
                    str(tmp_path / "again"),
                    "--cache",
                    str(tmp_path / "out" / ".image_cache"),
                ]
            )
            == 0
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    with Image.open(io.BytesIO(images[0])) as img:
        assert img.convert("RGB").getpixel((5, 5))[1] > 200  # type: ignore[index]
    assert [img is None for img in images] == [False, True, True, True]  # A2 /A2 and A5 are 404s
    again = read_dataset(tmp_path / "again")
    assert again.items.column("image").to_pylist() == images
    assert again.meta["image_failures"] == {"no_reference": 1, "not_found": 2}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
