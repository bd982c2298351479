"""Test helper: read a TensorBoard log folder the way TensorBoard's hparams plugin serves it."""

from __future__ import annotations

from pathlib import Path


def hparams_table(logdir: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    """What TensorBoard's hparams plugin serves for ``logdir``: its metric columns in order, and
    each session's (run's) metric values, read by the plugin's own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider)
    )
    ctx = context.RequestContext()
    experiment = backend.experiment_from_metadata(
        ctx, "", True, backend.hparams_metadata(ctx, ""), None
    )
    statuses = [api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_UNKNOWN]
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, allowed_statuses=statuses, include_metrics=True
    )
    groups = list_session_groups.Handler(ctx, backend, "", request).run().session_groups
    values = {
        s.name: {m.name.tag: m.value for m in s.metric_values} for g in groups for s in g.sessions
    }
    return [m.display_name for m in experiment.metric_infos], values
