"""``dmlkit export``: a run's embedder as ONNX or TorchScript, runnable without dmlkit."""

from __future__ import annotations

from pathlib import Path

import typer

from dmlkit.cli._errors import check_output_file, one_line


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        run_dir: Path = typer.Argument(..., help="Run directory."),
        fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript."),
        out: Path = typer.Option(..., "--out", "-o", help="Model file to write."),
    ) -> None:
        """Export the embedder: float32 rows (batch, n_features) in, (batch, dim) out."""
        from dmlkit.runs.export import export_run

        try:
            check_output_file(out, "model file")
            info = export_run(run_dir, out, fmt)
        except (ImportError, ValueError, OSError, RuntimeError) as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {out} ({fmt}): inputs (batch, {info['n_features']}) from shape "
                   f"{tuple(info['input_shape'])}, embeddings (batch, {info['dim']}); "
                   f"outputs equal the torch model's to 1e-5; description in {out}.json")
