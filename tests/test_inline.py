from __future__ import annotations

from newsletter.inline import inline_css, split_at_rules


def test_split_keeps_at_rules_and_pseudo_classes_apart_in_order() -> None:
    css = """
    /* reset */ p { margin: 0; }
    @import url(x.css);
    @media (max-width: 480px) { .a { width: 100% !important; } .b { color: red; } }
    a:hover { color: blue; }
    td { padding: 0 }
    """
    inline, kept = split_at_rules(css)
    assert inline == "p { margin: 0; }\ntd { padding: 0 }"
    assert kept == (
        "@import url(x.css);\n"
        "@media (max-width: 480px) { .a { width: 100% !important; } .b { color: red; } }\n"
        "a:hover { color: blue; }"
    )


def test_inline_css_moves_rules_into_attributes_and_keeps_media_queries() -> None:
    html = (
        "<html><head><style>p { color: red; } @media (max-width: 480px) "
        "{ p { color: blue !important; } }</style></head><body><p>x</p></body></html>"
    )
    out = inline_css(html)
    assert out.startswith("<!doctype html>")
    assert '<p style="color:red">x</p>' in out
    assert "@media (max-width: 480px) { p { color: blue !important; } }" in out
    assert "data-premailer" not in out


def test_styles_inside_outlook_conditional_comments_are_left_alone() -> None:
    html = (
        "<html><head><!--[if mso]><style>.x { width: 1px !important; }</style><![endif]-->"
        "</head><body><p class='x'>x</p></body></html>"
    )
    out = inline_css(html)
    assert "<!--[if mso]><style>.x { width: 1px !important; }</style><![endif]-->" in out
    assert '<p class="x">x</p>' in out
