//! Criterion benchmarks of every rich-text parse and render path, on a typical chat message
//! (one line of about 150 characters with bold, italic, code, a link and a mention) and on
//! a paste (a code block and quote, about 2 KB).
//!
//! Owns: the benchmark inputs and groups.
//! Must not: measure anything but the library calls (inputs are built outside the timings).

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use tribridge::richtext::irc::{self, IrcRenderOptions};
use tribridge::richtext::mention;
use tribridge::richtext::model::{Mention, MentionTarget};
use tribridge::richtext::{html, markdown};
use tribridge::vocab::{CaseMapping, People};

const IRC_TYPICAL: &str = "\x02alice\x02: the build on \x1dmain\x1d is green again, see \
https://ci.example.org/run/4521 \x0304(3 flaky tests)\x03 and try \x11cargo test -p core\x11 👍";
const MD_TYPICAL: &str = "@alice the build on *main* is green again, see \
[the run](https://ci.example.org/run/4521) (3 flaky tests) and try `cargo test -p core` 👍";
const HTML_TYPICAL: &str = "<a href=\"https://matrix.to/#/@alice:example.org\">Alice</a>: the \
build on <em>main</em> is green again, see <a href=\"https://ci.example.org/run/4521\">the run</a> \
<span data-mx-color=\"#ff0000\">(3 flaky tests)</span> and try <code>cargo test -p core</code> 👍";

fn paste_md() -> String {
    let mut s = String::from("> what does this print?\n\nHere it is:\n\n```rust\n");
    for i in 0..40 {
        let _ = writeln!(s, "    let v{i} = compute({i}) * 2; // step {i}");
    }
    s.push_str("```\n\n**Done**, thanks ~town-square");
    s
}

fn bench(c: &mut Criterion) {
    let paste = paste_md();
    let irc_model = irc::parse(IRC_TYPICAL);
    let md_model = markdown::parse(MD_TYPICAL);
    let html_model = html::parse(HTML_TYPICAL);
    let paste_model = markdown::parse(&paste);
    let opts = IrcRenderOptions::default();

    let mut g = c.benchmark_group("typical");
    g.bench_function("irc_parse", |b| {
        b.iter(|| irc::parse(black_box(IRC_TYPICAL)));
    });
    g.bench_function("irc_render", |b| {
        b.iter(|| irc::render(black_box(&html_model), &opts));
    });
    g.bench_function("markdown_parse", |b| {
        b.iter(|| markdown::parse(black_box(MD_TYPICAL)));
    });
    g.bench_function("markdown_render", |b| {
        b.iter(|| markdown::render(black_box(&irc_model)));
    });
    g.bench_function("html_parse", |b| {
        b.iter(|| html::parse(black_box(HTML_TYPICAL)));
    });
    g.bench_function("html_render", |b| {
        b.iter(|| html::render(black_box(&md_model)));
    });
    let people = People::new(
        [
            ("libera".to_owned(), CaseMapping::Rfc1459),
            ("matrix".to_owned(), CaseMapping::Exact),
            ("mattermost".to_owned(), CaseMapping::Ascii),
        ]
        .into(),
    );
    people.saw("matrix", "@alice:example.org", "Alice");
    g.bench_function("mentions_rewrite_neutralise", |b| {
        b.iter(|| {
            let mut t = html_model.clone();
            mention::rewrite_mentions(&mut t, "mattermost", &|_, _| None, &|network, id| {
                people.current(network, id).map(|(_, shown)| shown)
            });
            mention::neutralise_mass_pings(&mut t, false);
            t
        });
    });
    g.finish();

    // The mention pass of one IRC line with a directory of 1,000 people relayed from Matrix:
    // names found in the line, then mentions made Matrix pills.
    let big = People::new(
        [
            ("libera".to_owned(), CaseMapping::Rfc1459),
            ("matrix".to_owned(), CaseMapping::Exact),
        ]
        .into(),
    );
    for i in 0..1000 {
        big.saw(
            "matrix",
            &format!("@person{i}:example.org"),
            &format!("person{i}"),
        );
    }
    let line = "person500: the build on main is green again, thanks person999 and person1 for it";
    let mut g = c.benchmark_group("mentions_1000_people");
    g.bench_function("irc_line_detect_rewrite", |b| {
        b.iter(|| {
            let mut t = irc::parse(black_box(line));
            mention::detect_mentions(&mut t, &|word| big.shown_as("libera", word));
            mention::rewrite_mentions(
                &mut t,
                "matrix",
                &|id, display| {
                    Some(Mention {
                        display: display.to_owned(),
                        target: MentionTarget::User {
                            network: "matrix".into(),
                            user_id: id.to_owned(),
                        },
                    })
                },
                &|_, _| None,
            );
            t
        });
    });
    g.finish();

    let mut g = c.benchmark_group("paste_2kb");
    g.bench_function("markdown_parse", |b| {
        b.iter(|| markdown::parse(black_box(&paste)));
    });
    g.bench_function("irc_render", |b| {
        b.iter(|| irc::render(black_box(&paste_model), &opts));
    });
    g.bench_function("markdown_render", |b| {
        b.iter(|| markdown::render(black_box(&paste_model)));
    });
    g.bench_function("html_render", |b| {
        b.iter(|| html::render(black_box(&paste_model)));
    });
    let paste_html = html::render(&paste_model)
        .formatted_body
        .unwrap_or_default();
    g.bench_function("html_parse", |b| {
        b.iter(|| html::parse(black_box(&paste_html)));
    });
    let paste_irc = irc::render(&paste_model, &opts).join("\n");
    g.bench_function("irc_parse", |b| {
        b.iter(|| irc::parse(black_box(&paste_irc)));
    });
    g.finish();
}

/// Private, so that the undocumented fn `criterion_group!` makes is not crate API.
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
