"""Office readers on files the tests write with the real libraries (openpyxl, xlwt, odfpy,
python-pptx, msoffcrypto-tool): sheets, slides, OpenDocument, RTF, and their encrypted,
corrupt and oversized variants."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from forgeml.data.ingest import ingest_files
from forgeml.data.readers import (
    ReadOptions,
    SkipDocument,
    read_odp,
    read_odt,
    read_parts,
    read_pptx,
    read_rtf,
    reader_for,
)


def parts_of(name: str, data: bytes, options: ReadOptions | None = None) -> list:
    return list(read_parts(reader_for(Path(name)), data, options))


def skip_reason(name: str, data: bytes, options: ReadOptions | None = None) -> str:
    with pytest.raises(SkipDocument) as err:
        parts_of(name, data, options)
    return err.value.reason


def make_xlsx() -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    staff = book.active
    staff.title = "Staff"
    staff.append(["name", "phone", "start", "notes"])
    staff.append(["Ann Lee", "+44 20 7946 0018", dt.datetime(2021, 3, 1), "line one\nline two"])
    staff.append(["Bob Stone", None, 3.0, None])
    numbers = book.create_sheet("Numbers")  # no header row: cells stay in their columns
    numbers.append([1, 2, 3])
    numbers.append([4.5, None, "x"])
    book.create_sheet("Empty")
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def test_xlsx_one_document_per_sheet_with_headers():
    parts = parts_of("book.xlsx", make_xlsx())
    assert [(p.locator, p.skip) for p in parts] == [
        ("sheet Staff", ""),
        ("sheet Numbers", ""),
        ("sheet Empty", "empty"),
    ]
    assert parts[0].text == (
        "Sheet: Staff\n"
        "name: Ann Lee; phone: +44 20 7946 0018; start: 2021-03-01; notes: line one line two\n"
        "name: Bob Stone; start: 3"
    )
    assert parts[0].metadata == {
        "sheet": "Staff",
        "rows": 2,
        "columns": ["name", "phone", "start", "notes"],
    }
    assert parts[1].text == "Sheet: Numbers\n1 | 2 | 3\n4.5 |  | x"
    assert reader_for(Path("book.xlsx")).doc_type == "spreadsheet"


def test_xlsx_corrupt_encrypted_and_bomb():
    data = make_xlsx()
    assert skip_reason("book.xlsx", data[: len(data) // 2]) == "corrupt"
    assert skip_reason("book.xlsx", b"PK\x03\x04 not really a zip") == "corrupt"
    assert skip_reason("book.xlsx", data, ReadOptions(max_expanded_bytes=1000)) == "zip bomb"


@pytest.mark.parametrize("name", ["locked.xlsx", "locked.docx", "locked.pptx"])
def test_password_protected_office_files_are_skipped_as_encrypted(name):
    msoffcrypto = pytest.importorskip("msoffcrypto", reason="msoffcrypto-tool encrypts OOXML")
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    OOXMLFile(io.BytesIO(make_xlsx())).encrypt("s3cret", out)
    assert msoffcrypto.OfficeFile(io.BytesIO(out.getvalue())).is_encrypted()
    assert skip_reason(name, out.getvalue()) == "encrypted"


def test_xls_with_xlrd():
    xlwt = pytest.importorskip("xlwt", reason="xlwt writes the .xls the test reads")
    book = xlwt.Workbook()
    sheet = book.add_sheet("Orders")
    sheet.write(0, 0, "order")
    sheet.write(0, 1, "amount")
    sheet.write(0, 2, "date")
    sheet.write(1, 0, "A-1")
    sheet.write(1, 1, 12.5)
    sheet.write(1, 2, dt.datetime(2020, 5, 17), xlwt.easyxf(num_format_str="YYYY-MM-DD"))
    sheet.write(2, 0, "A-2")
    sheet.write(2, 1, 3)
    buf = io.BytesIO()
    book.save(buf)
    (part,) = parts_of("old.xls", buf.getvalue())
    assert (
        part.text
        == "Sheet: Orders\norder: A-1; amount: 12.5; date: 2020-05-17\norder: A-2; amount: 3"
    )
    assert skip_reason("old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600) == "corrupt"
    assert skip_reason("old.xls", b"just text") == "corrupt"
    (renamed,) = parts_of("new.xls", make_xlsx())[:1]  # an xlsx saved as .xls
    assert renamed.locator == "sheet Staff"


def make_ods(rows: list[list]) -> bytes:
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import Table, TableCell, TableRow
    from odf.text import P

    document = OpenDocumentSpreadsheet()
    table = Table(name="Budget")
    for row in rows:
        table_row = TableRow()
        for value in row:
            if isinstance(value, str):
                cell = TableCell(valuetype="string")
            else:
                cell = TableCell(valuetype="float", value=value)
            cell.addElement(P(text=str(value)))
            table_row.addElement(cell)
        table_row.addElement(TableCell(numbercolumnsrepeated=16000))  # LibreOffice's blank run
        table.addElement(table_row)
    table.addElement(TableRow(numberrowsrepeated=1000000))
    document.spreadsheet.addElement(table)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def test_ods_with_odfpy():
    data = make_ods([["item", "cost"], ["valves", 1200], ["pumps", 300.5]])
    (part,) = parts_of("budget.ods", data)
    assert part.text == "Sheet: Budget\nitem: valves; cost: 1200\nitem: pumps; cost: 300.5"
    assert part.metadata["columns"] == ["item", "cost"]
    assert skip_reason("budget.ods", data[:100]) == "corrupt"


def make_pptx() -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Quarterly review"
    slide.placeholders[1].text = "Revenue up\nCosts down"
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(4), Inches(4), Inches(1)).table
    for (r, c), text in {(0, 0): "region", (0, 1): "sales", (1, 0): "north", (1, 1): "12"}.items():
        table.cell(r, c).text = text
    slide.notes_slide.notes_text_frame.text = "Mention the new plant."
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Next steps"
    box = second.shapes.add_textbox(Inches(1), Inches(2), Inches(4), Inches(1))
    box.text_frame.text = "Hire two engineers"
    buf = io.BytesIO()
    deck.save(buf)
    return buf.getvalue()


def test_pptx_titles_text_tables_and_notes():
    data = make_pptx()
    assert read_pptx(data) == (
        "## Slide 1: Quarterly review\nRevenue up\nCosts down\nregion | sales\nnorth | 12\n"
        "Notes: Mention the new plant.\n\n## Slide 2: Next steps\nHire two engineers"
    )
    assert reader_for(Path("deck.pptx")).doc_type == "presentation"
    with pytest.raises(SkipDocument) as err:
        read_pptx(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


def test_odt_and_odp_with_odfpy():
    from odf.draw import Frame, Page, TextBox
    from odf.opendocument import OpenDocumentPresentation, OpenDocumentText
    from odf.style import MasterPage, PageLayout
    from odf.text import H, List, ListItem, P, Span

    text = OpenDocumentText()
    text.text.addElement(H(outlinelevel=1, text="Maintenance policy"))
    para = P(text="Check the ")
    para.addElement(Span(text="seals"))
    para.addText(" every week.")
    text.text.addElement(para)
    items = List()
    for entry in ("valves", "pumps"):
        item = ListItem()
        item.addElement(P(text=entry))
        items.addElement(item)
    text.text.addElement(items)
    buf = io.BytesIO()
    text.save(buf)
    assert (
        read_odt(buf.getvalue()) == "Maintenance policy\nCheck the seals every week.\nvalves\npumps"
    )

    deck = OpenDocumentPresentation()
    layout = PageLayout(name="layout")
    deck.automaticstyles.addElement(layout)
    master = MasterPage(name="master", pagelayoutname=layout)
    deck.masterstyles.addElement(master)
    for name, body in (("Intro", "Welcome to the plant"), ("Safety", "Wear a helmet")):
        page = Page(name=name, masterpagename=master)
        frame = Frame(width="10cm", height="2cm", x="1cm", y="1cm")
        box = TextBox()
        box.addElement(P(text=body))
        frame.addElement(box)
        page.addElement(frame)
        deck.presentation.addElement(page)
    buf = io.BytesIO()
    deck.save(buf)
    assert read_odp(buf.getvalue()) == (
        "## Slide 1: Intro\nWelcome to the plant\n\n## Slide 2: Safety\nWear a helmet"
    )
    with pytest.raises(SkipDocument) as err:
        read_odt(b"PK\x03\x04broken")
    assert err.value.reason == "corrupt"


def test_rtf_in_its_code_page():
    rtf = (
        rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Times;}}\f0 Caf\'e9 \'93smart\'94 quotes"
        rb"\par Second line \u8364? euro\par}"
    )
    assert read_rtf(rtf) == "Caf\xe9 \u201csmart\u201d quotes\nSecond line \u20ac euro"
    cyrillic = rb"{\rtf1\ansi\ansicpg1251 \'cf\'f0\'e8\'e2\'e5\'f2\par}"
    assert read_rtf(cyrillic) == "\u041f\u0440\u0438\u0432\u0435\u0442"
    with pytest.raises(SkipDocument) as err:
        read_rtf(b"plain text, not rtf")
    assert err.value.reason == "corrupt"


def test_ingest_accounts_for_every_office_file(tmp_path):
    root = tmp_path / "office"
    root.mkdir()
    xlsx = make_xlsx()
    (root / "staff.xlsx").write_bytes(xlsx)
    (root / "broken.xlsx").write_bytes(xlsx[: len(xlsx) // 3])
    (root / "deck.pptx").write_bytes(make_pptx())
    (root / "budget.ods").write_bytes(make_ods([["item", "cost"], ["valves", 1200]]))
    (root / "memo.rtf").write_bytes(rb"{\rtf1\ansi Caf\'e9 memo\par}")
    report = ingest_files([root], tmp_path / "out.parquet")
    assert report.kept + report.skipped + report.failed == report.found == 5
    status = {f["path"]: (f["status"], f["reason"]) for f in report.files}
    assert status["broken.xlsx"] == ("skipped", "corrupt")
    assert report.by_type == {"document": 1, "presentation": 1, "spreadsheet": 3}
    assert report.parts_skipped_by_reason == {"empty": 1}  # the workbook's empty sheet
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    sheets = [(r["path"], r["locator"]) for r in rows if r["type"] == "spreadsheet"]
    assert sheets == [
        ("budget.ods", "sheet Budget"),
        ("staff.xlsx", "sheet Staff"),
        ("staff.xlsx", "sheet Numbers"),
    ]
