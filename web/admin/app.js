// The /admin/ page: plain JS, no framework, no CDN. It reads the same JSON API a script would
// (/admin/v1/usage and /admin/v1/events); the admin key lives in an HttpOnly cookie it never sees.
'use strict'
;(function () {
  const $ = (id) => document.getElementById(id)
  const DAY_MS = 86400000

  // ---- exact decimals: amounts arrive as decimal strings and are only rounded for display, by
  // the rule "My usage" and the 402 use (money.js, loaded before this file) ----
  const usd = globalThis.usageProxyMoney.formatUsd
  function groupThousands (s) {
    const [int, frac] = s.split('.')
    const g = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',')
    return frac === undefined ? g : `${g}.${frac}`
  }
  const count = (v) => groupThousands(String(v))
  function ratio (a, b) { // a / b as a float, for bar lengths only
    const fa = Number(a); const fb = Number(b)
    return fb > 0 ? Math.max(0, fa / fb) : 0
  }

  // ---- dates (UTC, YYYY-MM-DD) ----
  const iso = (ms) => new Date(ms).toISOString().slice(0, 10)
  const todayMs = () => Date.parse(iso(Date.now()))
  function monthStart (ms, plus) { const d = new Date(ms); return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + (plus || 0), 1) }
  function presetRange (name) {
    const t = todayMs()
    switch (name) {
      case 'last-month': return [monthStart(t, -1), monthStart(t) - DAY_MS]
      case 'last-7': return [t - 6 * DAY_MS, t]
      case 'last-30': return [t - 29 * DAY_MS, t]
      case 'this-year': return [Date.UTC(new Date(t).getUTCFullYear(), 0, 1), t]
      default: return [monthStart(t), monthStart(t, 1) - DAY_MS]
    }
  }

  // ---- state lives in the URL fragment, so a view can be bookmarked and Back works ----
  function readState () {
    const h = new URLSearchParams(location.hash.slice(1))
    const [pf, pt] = presetRange('this-month')
    return { from: h.get('from') || iso(pf), through: h.get('through') || iso(pt), preset: h.get('preset') || 'this-month', user: h.get('user'), group: h.get('group') }
  }
  function writeState (s) {
    const h = new URLSearchParams({ from: s.from, through: s.through, preset: s.preset })
    if (s.user !== null && s.user !== undefined) h.set('user', s.user)
    else if (s.group !== null && s.group !== undefined) h.set('group', s.group)
    location.hash = h.toString()
  }
  const apiPeriod = (s) => `from=${s.from}&to=${iso(Date.parse(s.through) + DAY_MS)}`

  async function api (path) {
    const res = await fetch(path, { credentials: 'same-origin', headers: { accept: 'application/json' } })
    if (res.status === 401) { showSignIn(); throw new Error('signed out') }
    const body = await res.json()
    if (!res.ok) throw new Error(body.error ? body.error.message : `HTTP ${res.status}`)
    return body
  }

  // ---- building blocks ----
  function el (tag, attrs, children) {
    const e = document.createElement(tag)
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue
      if (k === 'text') e.textContent = v
      else if (k === 'class') e.className = v
      else e.setAttribute(k, v)
    }
    for (const c of children || []) if (c !== null && c !== undefined) e.append(c)
    return e
  }
  const money = (v) => el('span', { class: 'num', 'data-exact': v, title: `$${v}`, text: usd(v) })
  const num = (v) => el('span', { class: 'num', 'data-exact': String(v), text: count(v) })

  function totalsInto (dl, t) {
    dl.replaceChildren()
    for (const [id, label, node] of [
      ['requests', 'Requests', num(t.requests)],
      ['tokens', 'Tokens', num(t.total_tokens)],
      ['cost', 'Cost (OpenRouter)', money(t.cost_usd)],
      ['billed', 'Billed (with markup)', money(t.billed_cost_usd)],
    ]) {
      dl.append(el('div', { class: 'total', id: `${dl.id}-${id}` }, [el('dt', { text: label }), el('dd', {}, [node])]))
    }
  }

  /**
   * A real <table> with a caption, a CSV link for exactly its rows, and optional sorting: a
   * sortable column's header is a button, and aria-sort says the current order.
   */
  function table (container, { id, title, columns, rows, csv, sortBy }) {
    container.replaceChildren()
    container.setAttribute('aria-labelledby', `${id}-title`)
    const head = el('div', { class: 'table-head' }, [
      el('h3', { id: `${id}-title`, text: title }),
      csv ? el('a', { class: 'csv', href: csv, download: '', id: `${id}-csv`, 'aria-label': `Download ${title} as CSV`, text: 'CSV' }) : null,
    ])
    const tbl = el('table', { id })
    tbl.append(el('caption', { class: 'sr-only', text: title }))
    const thead = el('thead')
    const tbody = el('tbody')
    let order = sortBy ? { key: sortBy, dir: 'descending' } : null
    const headRow = el('tr')
    for (const c of columns) {
      const th = el('th', { scope: 'col', class: c.numeric ? 'numeric' : null })
      if (c.sort) {
        const b = el('button', { type: 'button', class: 'sort', text: c.label })
        b.addEventListener('click', () => {
          order = { key: c.key, dir: order && order.key === c.key && order.dir === 'descending' ? 'ascending' : 'descending' }
          draw()
        })
        th.append(b)
      } else th.textContent = c.label
      headRow.append(th)
    }
    thead.append(headRow)
    function draw () {
      const sorted = [...rows]
      if (order) {
        const col = columns.find((c) => c.key === order.key)
        sorted.sort((a, b) => {
          const d = col.sortValue(a) - col.sortValue(b)
          return order.dir === 'ascending' ? d : -d
        })
      }
      headRow.querySelectorAll('th').forEach((th, i) => {
        if (columns[i].sort) th.setAttribute('aria-sort', order && order.key === columns[i].key ? order.dir : 'none')
      })
      tbody.replaceChildren(...sorted.map((r) => el('tr', {}, columns.map((c, i) =>
        el(i === 0 ? 'th' : 'td', { scope: i === 0 ? 'row' : null, class: c.numeric ? 'numeric' : null }, [c.cell(r)])))))
    }
    draw()
    tbl.append(thead, tbody)
    container.append(head, el('div', { class: 'table-wrap' }, [tbl]))
  }

  const SUM_COLUMNS = [
    { key: 'requests', label: 'Requests', numeric: true, sort: true, sortValue: (r) => r.requests, cell: (r) => num(r.requests) },
    { key: 'tokens', label: 'Tokens', numeric: true, sort: true, sortValue: (r) => Number(r.total_tokens), cell: (r) => num(r.total_tokens) },
    { key: 'cost', label: 'Cost', numeric: true, sort: true, sortValue: (r) => Number(r.cost_usd), cell: (r) => money(r.cost_usd) },
    { key: 'billed', label: 'Billed', numeric: true, sort: true, sortValue: (r) => Number(r.billed_cost_usd), cell: (r) => money(r.billed_cost_usd) },
  ]

  // A budget names its period: the column's header when every listed budget has the same one,
  // each cell when they differ (a daily and a monthly budget must not read alike).
  const PERIOD_NAME = { day: 'day', week: 'week', month: 'month', total: 'all time' }
  const PER_PERIOD = { day: 'per day', week: 'per week', month: 'per month', total: 'in total' }
  const periodName = (p) => PERIOD_NAME[p] || p
  const perPeriod = (p) => PER_PERIOD[p] || `per ${p}`
  function budgetColumn (rows) {
    const periods = [...new Set(rows.flatMap((r) => (r.budget ? [r.budget.period] : [])))]
    const one = periods.length === 1 ? periods[0] : null
    return {
      key: 'budget',
      label: one ? `Budget used (${periodName(one)})` : 'Budget used',
      cell: (r) => budgetCell(r.budget, one === null),
    }
  }

  function budgetCell (b, sayPeriod) {
    if (!b) return el('span', { class: 'muted', text: '—' })
    const pct = Math.round(ratio(b.used_usd, b.limit_usd) * 100)
    const of = `${pct}% of ${usd(b.limit_usd)}${sayPeriod ? ` ${perPeriod(b.period)}` : ''}`
    return el('span', { class: 'budget', 'data-period': b.period }, [
      el('meter', { min: '0', max: '100', low: '80', high: '95', optimum: '0', value: String(Math.min(pct, 100)), 'aria-label': `${pct}% of ${usd(b.limit_usd)} ${perPeriod(b.period)}` }),
      el('span', { text: ` ${of}` }),
    ])
  }

  /**
   * Bars of billed cost per day over the whole period (days without requests show as empty).
   * Horizontal positions are percentages and heights pixels, with no viewBox: the SVG stretches
   * to its card without scaling, so its labels stay at their CSS size on a phone.
   */
  function chart (container, days, s) {
    container.replaceChildren()
    const byDay = new Map(days.map((d) => [d.day, d]))
    const all = []
    for (let t = Date.parse(s.from); t <= Date.parse(s.through); t += DAY_MS) all.push(iso(t))
    const max = days.reduce((m, d) => Math.max(m, Number(d.billed_cost_usd)), 0)
    // The label shows the exact amount of the highest day; the float only sizes bars.
    const top = days.reduce((b, d) => (b === null || Number(d.billed_cost_usd) > Number(b.billed_cost_usd) ? d : b), null)
    const H = 200; const TOP = 20; const n = Math.max(all.length, 1)
    const pct = (x) => `${(x * 100).toFixed(4)}%`
    const NS = 'http://www.w3.org/2000/svg'
    const svg = document.createElementNS(NS, 'svg')
    svg.setAttribute('width', '100%')
    svg.setAttribute('height', String(H + 22))
    svg.setAttribute('role', 'img')
    const total = days.reduce((k, d) => k + d.requests, 0)
    svg.setAttribute('aria-label', `Billed cost per day from ${s.from} through ${s.through}; highest day ${top ? usd(top.billed_cost_usd) : '$0.00'}; ${total} requests. The table below lists each day.`)
    const axis = document.createElementNS(NS, 'line')
    for (const [k, v] of [['x1', '0'], ['x2', '100%'], ['y1', H], ['y2', H]]) axis.setAttribute(k, String(v))
    axis.setAttribute('class', 'axis')
    svg.append(axis)
    const label = document.createElementNS(NS, 'text')
    label.setAttribute('x', '0'); label.setAttribute('y', '12'); label.setAttribute('class', 'tick')
    label.textContent = top ? `highest day ${usd(top.billed_cost_usd)}` : '$0.00'
    svg.append(label)
    // Date labels: the first, the last, and about six between, none crowding the last one.
    const step = Math.ceil(n / 6)
    const labelled = (i) => i === 0 || i === n - 1 || (n > 10 && i % step === 0 && n - 1 - i >= step / 2)
    all.forEach((day, i) => {
      const d = byDay.get(day)
      const h = d && max > 0 ? Math.max(1, (Number(d.billed_cost_usd) / max) * (H - TOP)) : 0
      const r = document.createElementNS(NS, 'rect')
      r.setAttribute('x', pct((i + 0.1) / n))
      r.setAttribute('width', pct(0.8 / n))
      r.setAttribute('y', String(H - h))
      r.setAttribute('height', String(h))
      r.setAttribute('class', 'bar')
      r.setAttribute('data-day', day)
      const tip = document.createElementNS(NS, 'title')
      tip.textContent = `${day}: ${d ? usd(d.billed_cost_usd) : '$0.00'} billed, ${d ? d.requests : 0} requests`
      r.append(tip)
      svg.append(r)
      if (labelled(i)) {
        const tx = document.createElementNS(NS, 'text')
        tx.setAttribute('x', pct(i === 0 ? 0 : i === n - 1 ? 1 : (i + 0.5) / n)); tx.setAttribute('y', String(H + 16)); tx.setAttribute('class', 'tick')
        tx.setAttribute('text-anchor', i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle')
        tx.textContent = day.slice(5)
        svg.append(tx)
      }
    })
    container.append(svg)
  }

  const csvHref = (path) => path + (path.includes('?') ? '&' : '?') + 'format=csv'

  // ---- group budgets: listed by GET /admin/v1/budgets when the deployment has any (scope 'group') ----
  async function groupBudgets () {
    const list = await api('/admin/v1/budgets').catch(() => null)
    const out = new Map()
    for (const b of (list && list.data) || []) {
      if (b.scope !== 'group') continue
      const id = b.group_id ?? b.subject ?? b.user_id
      if (id !== null && id !== undefined) out.set(id, { limit_usd: b.limit_usd, period: b.period, used_usd: b.spent_usd })
    }
    return out
  }

  const GROUPS_NOTE = 'A request made by a member of several groups counts in each of those groups\' rows; the organization\'s total counts it once, so these rows can add up to more than the total.'

  async function groupsSection (s, p) {
    const [groups, budgets] = await Promise.all([api(`/admin/v1/usage?${p}&group_by=group`), groupBudgets()])
    const box = $('groups')
    box.hidden = groups.data.length === 0 && budgets.size === 0
    if (box.hidden) { box.replaceChildren(); return }
    const rows = groups.data.map((r) => ({ ...r, budget: budgets.get(r.group) || null }))
    // A group with a budget and no requests yet is listed too: its budget is worth seeing.
    for (const [id, b] of budgets) {
      if (!rows.some((r) => r.group === id)) rows.push({ group: id, members: 0, requests: 0, total_tokens: '0', cost_usd: '0', billed_cost_usd: '0', budget: b })
    }
    table(box, {
      id: 'groups-table', title: 'Groups', csv: csvHref(`/admin/v1/usage?${p}&group_by=group`), rows, sortBy: 'billed',
      columns: [
        { key: 'group', label: 'Group', cell: (r) => el('a', { href: '#', 'data-group': r.group, text: r.group }) },
        { key: 'members', label: 'Members', numeric: true, sort: true, sortValue: (r) => r.members, cell: (r) => num(r.members) },
        ...SUM_COLUMNS,
        ...(budgets.size > 0 ? [budgetColumn(rows)] : []),
      ],
    })
    box.append(el('p', { class: 'muted group-note', id: 'groups-note', text: GROUPS_NOTE }))
  }

  async function groupPage (s) {
    $('overview').hidden = true
    $('user-view').hidden = true
    $('group-view').hidden = false
    const p = `${apiPeriod(s)}&group=${encodeURIComponent(s.group)}`
    const [members, models, budgets] = await Promise.all([
      api(`/admin/v1/usage?${p}&group_by=user`), api(`/admin/v1/usage?${p}&group_by=model`), groupBudgets(),
    ])
    showOrganization(members)
    $('group-title').textContent = `Group ${s.group}`
    const budget = budgets.get(s.group)
    $('group-budget').replaceChildren(...(budget ? [el('span', { text: 'Group budget: ' }), budgetCell(budget, true)] : []))
    totalsInto($('group-totals'), members.totals)
    const empty = members.totals.requests === 0
    $('group-empty').hidden = !empty
    $('group-tables').hidden = empty
    $('group-title').focus()
    if (empty) return
    table($('group-members'), {
      id: 'group-members-table', title: `Members (${members.data.length})`, csv: csvHref(`/admin/v1/usage?${p}&group_by=user`), rows: members.data, sortBy: 'billed',
      columns: [
        { key: 'user', label: 'User', cell: (r) => r.user === null
          ? el('span', { class: 'muted', text: 'No user (API key only)' })
          : el('a', { href: '#', 'data-user': r.user, text: r.user_name || r.user }) },
        { key: 'email', label: 'Email', cell: (r) => r.user_email || '' },
        ...SUM_COLUMNS,
        budgetColumn(members.data),
      ],
    })
    table($('group-models'), { id: 'group-models-table', title: 'Models', csv: csvHref(`/admin/v1/usage?${p}&group_by=model`), rows: models.data, sortBy: 'billed',
      columns: [{ key: 'model', label: 'Model', cell: (r) => r.model || '(none)' }, ...SUM_COLUMNS] })
  }

  // ---- views ----
  async function overview (s) {
    delete $('overview').dataset.loaded
    $('user-view').hidden = true
    $('group-view').hidden = true
    $('overview').hidden = false
    const p = apiPeriod(s)
    const audit = auditTrail().catch(() => {})
    const [days, users, models, tasks, outcomes] = await Promise.all(['day', 'user', 'model', 'task', 'outcome']
      .map((g) => api(`/admin/v1/usage?${p}&group_by=${g}`)))
    showOrganization(days)
    totalsInto($('totals'), days.totals)
    const empty = days.totals.requests === 0
    $('empty').hidden = !empty
    $('overview-tables').hidden = empty
    if (empty) return loaded(audit)
    chart($('chart'), days.data, s)
    table($('days'), { id: 'days-table', title: 'Days', csv: csvHref(`/admin/v1/usage?${p}&group_by=day`), rows: days.data,
      columns: [{ key: 'day', label: 'Day', cell: (r) => r.day }, ...SUM_COLUMNS.map((c) => ({ ...c, sort: false }))] })
    table($('users'), {
      id: 'users-table', title: 'Users', csv: csvHref(`/admin/v1/usage?${p}&group_by=user`), rows: users.data, sortBy: 'billed',
      columns: [
        { key: 'user', label: 'User', cell: (r) => r.user === null
          ? el('span', { class: 'muted', text: 'No user (API key only)' })
          : el('a', { href: '#', 'data-user': r.user, text: r.user_name || r.user }) },
        { key: 'email', label: 'Email', cell: (r) => r.user_email || '' },
        ...SUM_COLUMNS,
        budgetColumn(users.data),
      ],
    })
    table($('models'), { id: 'models-table', title: 'Spend per model', csv: csvHref(`/admin/v1/usage?${p}&group_by=model`), rows: models.data, sortBy: 'billed',
      columns: [{ key: 'model', label: 'Model', cell: (r) => r.model || '(none)' }, ...SUM_COLUMNS] })
    table($('tasks'), { id: 'tasks-table', title: 'Chat and background tasks', csv: csvHref(`/admin/v1/usage?${p}&group_by=task`), rows: tasks.data,
      columns: [{ key: 'task', label: 'Kind', cell: (r) => taskLabel(r.task) }, ...SUM_COLUMNS] })
    table($('outcomes'), { id: 'outcomes-table', title: 'Outcomes: failed, aborted and refused requests', csv: csvHref(`/admin/v1/usage?${p}&group_by=outcome`), rows: outcomes.data,
      columns: [{ key: 'outcome', label: 'Outcome', cell: (r) => el('span', { class: r.outcome === 'ok' ? '' : 'warn', text: r.outcome }) }, ...SUM_COLUMNS] })
    // Last, so the tables above never wait for the groups and budgets reads.
    await groupsSection(s, p)
    await loaded(audit)
  }

  /** Marks the overview whole (every table and the audit trail drawn): what a reader of the page, a test or a screenshot, waits for. */
  async function loaded (audit) {
    await audit
    $('overview').dataset.loaded = 'true'
  }

  // The audit trail, newest first, a page at a time (GET /admin/v1/audit's cursor). Every value
  // goes in as text: a target or a value can hold anything a caller typed.
  const ACTORS = { env: 'environment', cli: 'command line' }
  function actorLabel (a) {
    if (ACTORS[a]) return ACTORS[a]
    const [kind, print] = a.split(':')
    return kind === 'session' ? `page sign-in ${print}` : kind === 'admin-key' ? `admin key ${print}` : a
  }
  const shown = (v) => v === null || v === undefined ? '—'
    : typeof v !== 'object' || Array.isArray(v) ? (typeof v === 'string' ? v : JSON.stringify(v))
      : Object.keys(v).sort().map((k) => `${k}: ${typeof v[k] === 'string' ? v[k] : JSON.stringify(v[k])}`).join(', ')
  async function auditTrail (cursor) {
    const body = await api(`/admin/v1/audit?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`)
    const tbody = $('audit-table').querySelector('tbody')
    if (!cursor) tbody.replaceChildren()
    for (const r of body.data) {
      tbody.append(el('tr', {}, [
        el('th', { scope: 'row' }, [el('time', { datetime: r.at, text: r.at.slice(0, 19).replace('T', ' ') })]),
        el('td', { title: r.actor, text: actorLabel(r.actor) }),
        el('td', { text: r.action }),
        el('td', { text: r.target }),
        el('td', { class: 'json', text: shown(r.before) }),
        el('td', { class: 'json', text: shown(r.after) }),
      ]))
    }
    $('audit-empty').hidden = tbody.children.length > 0
    const more = $('audit-more')
    more.hidden = !body.has_more
    more.onclick = body.has_more ? () => { auditTrail(body.next_cursor).catch(() => {}) } : null
  }

  // The header names the organization as people know it; the id stays at hand in the tooltip.
  function showOrganization (body) {
    const name = body.organization_name || body.organization
    $('org').textContent = name
    $('org').title = body.organization
    document.title = `Usage · ${name} · usage-proxy`
  }

  function taskLabel (kind) {
    if (kind === 'chat') return 'chat (a user\'s turn)'
    if (kind === 'api') return 'api (no chat app)'
    return `${kind} (background task)`
  }

  async function userPage (s) {
    $('overview').hidden = true
    $('group-view').hidden = true
    $('user-view').hidden = false
    const p = `${apiPeriod(s)}&user=${encodeURIComponent(s.user)}`
    const [days, models, events, users] = await Promise.all([
      api(`/admin/v1/usage?${p}&group_by=day`), api(`/admin/v1/usage?${p}&group_by=model`),
      api(`/admin/v1/events?${p}&limit=50`), api(`/admin/v1/usage?${p}&group_by=user`),
    ])
    showOrganization(days)
    const me = users.data[0]
    $('user-title').textContent = me && me.user_name ? `${me.user_name} (${s.user})` : s.user
    $('user-budget').replaceChildren(...(me && me.budget ? [el('span', { text: 'Budget: ' }), budgetCell(me.budget, true)] : []))
    totalsInto($('user-totals'), days.totals)
    const empty = days.totals.requests === 0
    $('user-empty').hidden = !empty
    $('user-tables').hidden = empty
    $('user-title').focus()
    if (empty) return
    chart($('user-chart'), days.data, s)
    table($('user-days'), { id: 'user-days-table', title: 'Days', csv: csvHref(`/admin/v1/usage?${p}&group_by=day`), rows: days.data,
      columns: [{ key: 'day', label: 'Day', cell: (r) => r.day }, ...SUM_COLUMNS.map((c) => ({ ...c, sort: false }))] })
    table($('user-models'), { id: 'user-models-table', title: 'Models', csv: csvHref(`/admin/v1/usage?${p}&group_by=model`), rows: models.data, sortBy: 'billed',
      columns: [{ key: 'model', label: 'Model', cell: (r) => r.model || '(none)' }, ...SUM_COLUMNS] })
    table($('user-events'), {
      id: 'user-events-table', title: 'Recent requests', csv: csvHref(`/admin/v1/events?${p}&limit=1000`), rows: events.data,
      columns: [
        { key: 'time', label: 'Time (UTC)', cell: (r) => r.created_at.slice(0, 19).replace('T', ' ') },
        { key: 'model', label: 'Model', cell: (r) => r.served_model || r.model || '' },
        { key: 'kind', label: 'Kind', cell: (r) => r.kind },
        { key: 'outcome', label: 'Outcome', cell: (r) => el('span', { class: r.outcome === 'ok' ? '' : 'warn', text: r.outcome }) },
        { key: 'tokens', label: 'Tokens', numeric: true, cell: (r) => num(r.total_tokens === null ? 0 : r.total_tokens) },
        { key: 'billed', label: 'Billed', numeric: true, cell: (r) => r.billed_cost_usd === null ? el('span', { class: 'muted', text: '—' }) : money(r.billed_cost_usd) },
      ],
    })
  }

  // ---- requests served without a spend check (read from the sidecar's memory, so it answers
  // even while the database does not and the rest of the page cannot load) ----
  async function admissions () {
    const box = $('admissions')
    try {
      const a = await api('/admin/v1/admissions')
      box.hidden = a.failed_open === 0
      if (a.failed_open === 0) return
      const when = a.last_failed_open_at ? a.last_failed_open_at.slice(0, 19).replace('T', ' ') + ' UTC' : ''
      box.textContent = `Spend limits were not checked for ${count(a.failed_open)} ${a.failed_open === 1 ? 'request' : 'requests'} ` +
        `since this sidecar started (the last at ${when}): Postgres did not answer in time and BUDGET_FAIL_MODE=open served them. ` +
        'Their spend counts toward budgets once their records are written.'
    } catch (err) { /* the rest of the page says what failed */ }
  }

  // The ledger's backlog, read from the sidecar's memory: shown apart from the usage (which is
  // only as complete as the ledger's last commit), and shown even when the usage cannot load.
  async function backlog () {
    const b = await api('/admin/v1/ledger').catch(() => null)
    const box = $('ledger-backlog')
    if (!b || b.backlog_records === 0) { box.hidden = true; box.textContent = ''; return }
    const waited = b.oldest_waiting_seconds >= 120 ? `${Math.round(b.oldest_waiting_seconds / 60)} min` : `${b.oldest_waiting_seconds} s`
    box.textContent = `${count(b.backlog_records)} request record(s) not yet in the database; the oldest has waited ${waited}. ` +
      (b.last_error ? `Postgres: ${b.last_error}. ` : '') + 'They are kept in the journal and appear here once the database takes them.'
    box.hidden = false
  }

  // The export to billing receivers: per sink, what went out, what waits, what was set aside.
  async function exportPanel () {
    const e = await api('/admin/v1/export').catch(() => null)
    const box = $('export-panel')
    const list = $('export-sinks')
    if (!e || e.data.length === 0) { box.hidden = true; return }
    list.replaceChildren(...e.data.map((s) => {
      const lag = s.pending === 0 ? 'caught up' : `${count(s.pending)}${s.pending_capped ? '+' : ''} waiting, the oldest for ${s.lag_seconds >= 120 ? `${Math.round(s.lag_seconds / 60)} min` : `${s.lag_seconds} s`}`
      const parts = [`${s.sink}: ${count(Number(s.rows_sent))} sent, ${lag}`]
      if (s.rows_set_aside !== '0') parts.push(`${count(Number(s.rows_set_aside))} set aside (latest: ${s.set_aside[0]?.reason ?? ''})`)
      if (s.last_error && (!s.last_sent_at || s.last_error_at > s.last_sent_at)) parts.push(`failing: ${s.last_error}`)
      if (!s.configured) parts.push('not configured on this replica')
      const li = document.createElement('li')
      li.textContent = parts.join('; ')
      if (parts.length > 1) li.className = 'warn'
      return li
    }))
    box.hidden = false
  }

  // ---- wiring ----
  function showSignIn () {
    $('dashboard').hidden = true
    $('sign-out').hidden = true
    $('sign-in-view').hidden = false
    $('key').focus()
  }

  let rendering = 0
  async function render () {
    const s = readState()
    $('preset').value = s.preset
    $('from').value = s.from
    $('through').value = s.through
    $('sign-in-view').hidden = true
    $('dashboard').hidden = false
    $('sign-out').hidden = false
    const mine = ++rendering
    admissions()
    backlog()
    exportPanel()
    $('status').textContent = 'Loading…'
    document.body.setAttribute('aria-busy', 'true')
    try {
      if (s.user !== null) await userPage(s)
      else if (s.group !== null) await groupPage(s)
      else await overview(s)
      if (mine === rendering) { $('status').textContent = `Showing ${s.from} through ${s.through} (UTC).`; document.body.removeAttribute('aria-busy') }
    } catch (err) {
      if (mine === rendering && err.message !== 'signed out') $('status').textContent = `Could not load: ${err.message}`
      document.body.removeAttribute('aria-busy')
    }
  }

  document.addEventListener('DOMContentLoaded', async () => {
    $('sign-in').addEventListener('submit', async (e) => {
      e.preventDefault()
      const res = await fetch('/admin/sign-in', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: $('key').value }) })
      if (res.status !== 204) { $('sign-in-error').textContent = 'That is not the admin key.'; return }
      $('key').value = ''
      $('sign-in-error').textContent = ''
      render()
    })
    $('sign-out').addEventListener('submit', async (e) => {
      e.preventDefault()
      await fetch('/admin/sign-out', { method: 'POST' })
      showSignIn()
    })
    $('preset').addEventListener('change', () => {
      if ($('preset').value === 'custom') { $('from').focus(); return }
      const [f, t] = presetRange($('preset').value)
      writeState({ ...readState(), from: iso(f), through: iso(t), preset: $('preset').value })
    })
    for (const id of ['from', 'through']) $(id).addEventListener('change', () => { $('preset').value = 'custom' })
    $('period').addEventListener('submit', (e) => {
      e.preventDefault()
      if ($('from').value > $('through').value) { $('status').textContent = 'The start of the period must not be after its end.'; return }
      writeState({ ...readState(), from: $('from').value, through: $('through').value, preset: $('preset').value })
    })
    document.addEventListener('click', (e) => {
      const a = e.target.closest('a[data-user]')
      if (a) { e.preventDefault(); writeState({ ...readState(), user: a.getAttribute('data-user'), group: null }) }
      const g = e.target.closest('a[data-group]')
      if (g) { e.preventDefault(); writeState({ ...readState(), user: null, group: g.getAttribute('data-group') }) }
    })
    for (const id of ['back', 'home-link', 'group-back']) {
      $(id).addEventListener('click', (e) => { e.preventDefault(); writeState({ ...readState(), user: null, group: null }) })
    }
    window.addEventListener('hashchange', render)
    const probe = await fetch('/admin/v1/', { credentials: 'same-origin' })
    if (probe.status === 401) showSignIn()
    else render()
  })
})()
