// The console's one stylesheet, served from /console/console.css (CSP allows styles from the service only).

export const CONSOLE_CSS = `
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #57606a; --line: #d0d7de; --accent: #0550ae;
  --bad: #a40e26; --ok: #116329; --warn: #7d4e00; --shade: #f6f8fa; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #30363d;
  --accent: #4493f8; --bad: #ff7b72; --ok: #3fb950; --warn: #d29922; --shade: #161b22; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--accent); }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -9999px; }
.skip:focus { left: 1rem; top: 1rem; background: var(--bg); padding: .5rem; }
header { border-bottom: 1px solid var(--line); background: var(--shade); }
header nav { display: flex; align-items: center; gap: 1rem; max-width: 72rem; margin: 0 auto; padding: .5rem 1rem; }
header nav ul { display: flex; gap: 1rem; list-style: none; margin: 0; padding: 0; flex: 1; }
header nav a[aria-current="page"] { font-weight: 700; text-decoration: none; color: var(--fg); }
.brand { font-weight: 700; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
caption { text-align: left; color: var(--muted); padding-bottom: .25rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; background: var(--shade); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, monospace; font-size: .92em; overflow-wrap: anywhere; }
form.inline { display: inline; }
form.search, form.add { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: end; margin: .5rem 0 1rem; }
label { display: flex; flex-direction: column; gap: .2rem; font-weight: 600; }
label.check { flex-direction: row; align-items: center; font-weight: 400; }
input[type=text], input[type=password], input[type=search], select { font: inherit; font-weight: 400; padding: .35rem .5rem; min-width: 16rem;
  border: 1px solid var(--line); border-radius: 4px; background: var(--bg); color: var(--fg); }
button { font: inherit; padding: .35rem .9rem; border-radius: 4px; border: 1px solid var(--line); cursor: pointer;
  background: var(--shade); color: var(--fg); }
button.danger { background: var(--bad); border-color: var(--bad); color: #fff; }
.notice { border-left: 4px solid var(--accent); background: var(--shade); padding: .6rem .9rem; margin: 0 0 1rem; }
.notice.error { border-color: var(--bad); }
.notice.secret { border-color: var(--warn); }
.state-active, .yes { color: var(--ok); }
.state-revoked, .low, .no { color: var(--bad); font-weight: 600; }
.stale { color: var(--warn); font-weight: 600; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1.5rem; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.pager { display: flex; gap: 1.5rem; margin: .5rem 0; }
.muted { color: var(--muted); }
`;
