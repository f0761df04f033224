"""``dmlkit export``: a run's embedder as ONNX or TorchScript, runnable without dmlkit."""

from __future__ import annotations

from pathlib import Path

import typer

from dmlkit.cli._errors import one_line
from dmlkit.cli._outputs import check_output_file, check_outside_saved


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        run_dir: Path = typer.Argument(..., help="Run directory."),
        fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript."),
        out: Path = typer.Option(..., "--out", "-o", help="Model file to write (never one of "
                                 "a run directory's own files)."),
        force: bool = typer.Option(False, "--force",
                                   help="Overwrite --out (and --out.json) when they exist."),
        verbose: bool = typer.Option(False, "--verbose", "-v",
                                     help="On a failed export, print the exporter's output."),
    ) -> None:
        """Export the embedder: float32 rows (batch, n_features) in, (batch, dim) out."""
        from dmlkit.runs.export import (
            TEXT_RUN,
            ExportError,
            check_export_target,
            export_run,
            is_text_run,
        )
        from dmlkit.training.run import MODEL_FILE

        try:
            check_output_file(out, "model file")
            check_export_target(run_dir, out, force=True)  # a run's own files: never
            check_outside_saved(out)  # nor inside an index or kit (its .json goes beside it)
            for path in (out, Path(f"{out}.json")):
                if path.is_file() and not force:
                    raise ValueError(f"--out: {path} exists; add --force to overwrite it")
            if is_text_run(run_dir):  # before its weights load
                raise ValueError(f"dmlkit export: {TEXT_RUN}")
            info = export_run(run_dir, out, fmt, force=force)
        except (ImportError, ValueError, OSError, RuntimeError) as err:
            if verbose and isinstance(err, ExportError) and err.detail:
                typer.echo(err.detail, err=True)
            hint = (" (--verbose shows the exporter's output)"
                    if isinstance(err, ExportError) and not verbose else "")
            typer.echo(f"error: {one_line(err)}{hint}", err=True)
            raise typer.Exit(1) from None
        if info.get("weights_note"):  # a run without model.pt: its checkpoint's weights
            typer.echo(f"note: {run_dir} has no {MODEL_FILE}: exporting the weights of its "
                       f"{info['weights_note']}", err=True)
        tolerance = f"{info.get('tolerance') or 1e-5:.2g}".replace("e-0", "e-")
        checked = (f"not verified: {info['not_verified']}" if info.get("not_verified")
                   else f"outputs equal the torch model's to {tolerance}")
        typer.echo(f"wrote {out} ({fmt}): inputs (batch, {info['n_features']}) from shape "
                   f"{tuple(info['input_shape'])}, embeddings (batch, {info['dim']}); "
                   f"{checked}; description in {out}.json")
