"""Write docs/paper_tables.md: the paper's Mult-Adds (Tables 3 and 5) beside ours.

python docs/make_paper_tables.py
"""

from pathlib import Path

from atrous.models.paper import render_markdown, reproduce

OUTPUT = Path(__file__).with_name("paper_tables.md")

if __name__ == "__main__":
    OUTPUT.write_text(render_markdown(reproduce()))
    print(f"wrote {OUTPUT}")
