// Drives the console in headless Chromium (Debian's, through playwright-core)
// against a running query service, as a person would use it:
//   1. the page loads with no console error, no page error and no failed request
//      (with --token: but the first calls refused with 401; it asks for the
//      token, which is typed in, and goes on with it);
//   2. the clusters list shows the cluster (and its leader, when expected);
//   3. the charts and the table of its last windows are drawn, and a newer
//      window appears without a reload (the stack is live);
//   4. a query typed into the SQL box runs and its rows are shown;
//   5. a screenshot is saved;
//   6. a forbidden statement shows the server's error, and the box still works.
// Prints progress, then one line `RESULT {json}`; exits 1 with `FAIL: why` otherwise.
//
// node console.mjs --url http://127.0.0.1:PORT --cluster C --screenshot FILE
//      [--expect-leader NODE_ID] [--token TOKEN] [--user-data-dir DIR]
// playwright-core is read from BACKBEAT_NODE_DIR ($HOME/.cache/backbeat-node),
// where deploy/install-chromium.sh puts it; the browser from BACKBEAT_CHROMIUM
// (/usr/bin/chromium).

import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join } from 'node:path';

const WAIT_MS = 45_000;

/** Ends the run: the browser is closed and `FAIL: why` printed (exit status 1). */
function fail(why) {
  throw new Error(why);
}

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      fail(`bad arguments: ${argv.join(' ')}`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const needed of ['url', 'cluster', 'screenshot']) {
    if (!args[needed]) {
      fail(`--${needed} is needed`);
    }
  }
  return args;
}

function loadPlaywright() {
  const dir = process.env.BACKBEAT_NODE_DIR || join(homedir(), '.cache', 'backbeat-node');
  try {
    return createRequire(join(dir, 'package.json'))('playwright-core');
  } catch (e) {
    fail(`playwright-core is not installed in ${dir} (run: bash deploy/install-chromium.sh): ${e.message}`);
  }
}

try {
  await main(parseArgs(process.argv.slice(2)));
} catch (e) {
  console.log(`FAIL: ${e.message}`);
  process.exitCode = 1;
}

async function main(args) {
  const { chromium } = loadPlaywright();
  const executablePath = process.env.BACKBEAT_CHROMIUM || '/usr/bin/chromium';
  const ownProfile = !args['user-data-dir'];
  const userDataDir = args['user-data-dir'] || mkdtempSync(join(tmpdir(), 'backbeat-chromium-'));

  // The network here is closed: without these Chromium waits on lookups of its own.
  const flags = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ];

  const problems = [];
  let allowed = () => false;
  const step = (text) => console.log(`- ${text}`);

  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: flags,
      viewport: { width: 1360, height: 1000 },
      timeout: WAIT_MS,
    });
  } catch (e) {
    if (ownProfile) {
      rmSync(userDataDir, { recursive: true, force: true });
    }
    fail(`Chromium (${executablePath}) did not start: ${e.message}`);
  }

  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(WAIT_MS);
    page.on('console', (message) => {
      if (message.type() === 'error' && !allowed(message.text())) {
        problems.push(`console error: ${message.text()}`);
      }
    });
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('requestfailed', (request) =>
      problems.push(`request failed: ${request.method()} ${request.url()} (${request.failure()?.errorText})`),
    );
    page.on('response', (response) => {
      const text = `${response.status()} ${response.request().method()} ${response.url()}`;
      if (response.status() >= 400 && !allowed(text)) {
        problems.push(`HTTP ${text}`);
      }
    });
    const checkProblems = (when) => {
      if (problems.length > 0) {
        fail(`${when}:\n  ${problems.join('\n  ')}`);
      }
    };

    if (args.token) {
      // The page's first calls go out before it has loaded.
      allowed = (text) => /\b401\b/.test(text);
    }
    const response = await page.goto(args.url, { waitUntil: 'load' });
    if (!response || response.status() !== 200) {
      fail(`GET ${args.url} answered ${response && response.status()}`);
    }
    step(`loaded ${args.url}: "${await page.title()}"`);

    if (args.token) {
      // The server wants a token: the page asks for it (its first calls are
      // refused, the only failed requests allowed), then goes on with it.
      await page.locator('#token-panel').waitFor({ state: 'visible' });
      await page.waitForFunction(() => document.getElementById('sql-status').textContent === 'failed');
      await page.locator('#token-input').fill(args.token);
      await page.locator('#token-form button[type=submit]').click();
      await page.locator('#token-panel').waitFor({ state: 'hidden' });
      allowed = () => false;
      const stored = await page.evaluate(() => sessionStorage.getItem('backbeat.console.token'));
      if (stored !== args.token) {
        fail(`the token kept in sessionStorage is ${JSON.stringify(stored)}`);
      }
      step('asked for the token, and goes on with it');
    }

    // The cluster's row, its beat and (when asked) its leader.
    const row = page.locator(`#clusters tbody tr[data-cluster="${args.cluster}"]`);
    await row.waitFor();
    await page.waitForFunction((cluster) => {
      const tr = document.querySelector(`#clusters tbody tr[data-cluster="${cluster}"]`);
      return tr && /^\d+$/.test(tr.children[3].textContent);
    }, args.cluster);
    const clusterCells = await row.locator('td').allInnerTexts();
    step(`cluster row: ${clusterCells.join(' | ')}`);
    if (args['expect-leader']) {
      await page.waitForFunction(
        ([cluster, leader]) =>
          document
            .querySelector(`#clusters tbody tr[data-cluster="${cluster}"]`)
            ?.children[1].textContent.startsWith(`node ${leader}`),
        [args.cluster, args['expect-leader']],
      );
    }

    // The charts and the windows table, then a newer window without a reload.
    await page.waitForFunction(() => document.querySelectorAll('#charts .chart canvas').length >= 4);
    await page.waitForFunction(() => document.querySelectorAll('#windows tbody tr').length >= 2);
    const firstWindow = Number(await page.locator('#windows tbody tr').first().getAttribute('data-window'));
    const charts = await page.locator('#charts figcaption').allInnerTexts();
    step(`charts: ${charts.map((c) => c.replace(/\s+/g, ' ')).join(' / ')}`);
    step(`newest window shown: ${firstWindow}; waiting for a newer one`);
    await page.waitForFunction(
      (before) => Number(document.querySelector('#windows tbody tr')?.dataset.window) > before,
      firstWindow,
    );
    const newerWindow = Number(await page.locator('#windows tbody tr').first().getAttribute('data-window'));
    const windowRows = await page.locator('#windows tbody tr').count();
    const liveText = await page.locator('#live-text').innerText();
    step(`newest window now ${newerWindow} (${windowRows} rows listed); "${liveText}"`);
    if (!liveText.startsWith('live')) {
      fail(`the live indicator says "${liveText}"`);
    }

    // A query typed into the box.
    const query = `SELECT window_index, agents_reporting FROM bar_reports WHERE cluster_id = '${args.cluster}' ORDER BY window_index LIMIT 3`;
    await page.locator('#sql-input').fill(query);
    await page.locator('#sql-run').click();
    await page.waitForFunction(
      (sql) =>
        document.getElementById('sql-status').textContent.startsWith('3 rows') &&
        document.getElementById('sql-input').value === sql,
      query,
    );
    const header = await page.locator('#sql-result thead th').allTextContents();
    const sqlRows = await page
      .locator('#sql-result tbody tr')
      .evaluateAll((rows) => rows.map((tr) => [...tr.children].map((td) => td.textContent)));
    step(`SQL box: ${header.join(', ')} -> ${JSON.stringify(sqlRows)}`);
    checkProblems('before the screenshot');

    await page.screenshot({ path: args.screenshot, fullPage: true });
    step(`screenshot: ${args.screenshot}`);

    // A refused statement: the server's message is shown, the page goes on.
    allowed = (text) => /403|Forbidden/.test(text);
    await page.locator('#sql-input').fill('DROP TABLE claims');
    await page.locator('#sql-run').click();
    await page.locator('#sql-error').waitFor({ state: 'visible' });
    const sqlError = await page.locator('#sql-error').innerText();
    step(`refused: ${sqlError}`);
    if (!sqlError.startsWith('forbidden (HTTP 403)')) {
      fail(`the error shown is "${sqlError}"`);
    }
    allowed = () => false;
    await page.locator('#sql-input').fill('SELECT 41 + 1 AS answer');
    await page.locator('#sql-run').click();
    await page.locator('#sql-error').waitFor({ state: 'hidden' });
    const answer = await page.locator('#sql-result tbody td').first().innerText();
    if (answer !== '42') {
      fail(`after the error, SELECT 41 + 1 showed "${answer}"`);
    }
    checkProblems('at the end');

    const result = {
      clusterCells,
      charts: charts.length,
      firstWindow,
      newerWindow,
      windowRows,
      header,
      sqlRows,
      sqlError,
    };
    console.log(`RESULT ${JSON.stringify(result)}`);
  } catch (e) {
    fail(`${e.message}${problems.length ? `\n  problems so far:\n  ${problems.join('\n  ')}` : ''}`);
  } finally {
    await context.close().catch(() => {});
    if (ownProfile) {
      rmSync(userDataDir, { recursive: true, force: true });
    }
  }
}
