"""Feature quality without labels (hub/spectrum.py, groundwork of #38): RankMe and the normalized outputs'
spread on matrices whose answer is known, and ``byol-embed spectrum`` on a real folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hub.spectrum import label_free, normalized_std, rankme


def test_rankme_is_the_effective_rank_and_the_spread_says_collapse():
    rng = np.random.default_rng(0)
    spread = rng.standard_normal((4000, 64))
    assert 0.9 * 64 < rankme(spread) <= 64
    assert abs(normalized_std(spread) - 1 / 8) < 0.01  # evenly over the sphere: 1/sqrt(d)
    low = rng.standard_normal((4000, 4)) @ rng.standard_normal((4, 64))  # rank 4 in 64 dimensions
    assert 3.0 < rankme(low) < 4.5
    collapsed = np.ones((4000, 64)) + 1e-4 * rng.standard_normal((4000, 64))
    assert rankme(collapsed) < 1.5 and normalized_std(collapsed) < 1e-3
    assert rankme(np.zeros((10, 8))) == 1.0
    summary = label_free(spread[:100])
    assert summary["samples"] == 100 and summary["dim"] == 64 and summary["rankme_share"] <= 1
    with pytest.raises(ValueError, match=r"an \(n, d\) matrix"):
        rankme(np.ones(5))


def test_byol_embed_spectrum_reports_every_embedded_layer(emb, capsys):
    from service.embed.cli import main

    capsys.readouterr()
    assert main(["spectrum", str(emb), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (layer,) = report["layers"]
    got = report["layers"][layer]
    assert layer == "avgpool" and got["dim"] == 512 and 1 <= got["rankme"] <= min(got["samples"], 512)
    assert 0 < got["std"] <= got["std_ideal"] * 1.5
    assert main(["spectrum", str(emb), "--sample", "1"]) == 2
    assert "--sample must be >= 2" in capsys.readouterr().err
