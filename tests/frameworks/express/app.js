// The deals API as an Express 4 service would write it: express.json() bodies, method-override honouring the
// X-HTTP-Method-Override header and ?_method= (the package's documented set-up), case-insensitive routing.
// Answers {"app":"express","handler":...,"stages":[...]}: what it would store. Used by tests/test_differential.py.
'use strict';
const express = require('express');
const methodOverride = require('method-override');

const app = express();
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('_method'));
app.use(express.json({ type: ['application/json', 'application/*+json'] }));

const stagesOf = (...deals) => deals.filter((d) => d && d.stage !== undefined).map((d) => d.stage);
const answer = (res, handler, stages) => res.json({ app: 'express', handler, stages });

app.get('/', (req, res) => res.send('ok'));
app.post('/api/v1/deals', (req, res) => answer(res, 'create', stagesOf(req.body)));
app.post('/api/v1/deals/import', (req, res) => {
  const deals = req.body && Array.isArray(req.body.deals) ? req.body.deals : [];
  answer(res, 'import', stagesOf(...deals));
});
const update = (req, res) => answer(res, 'update', stagesOf(req.body));
app.patch('/api/v1/deals/:id', update);
app.put('/api/v1/deals/:id', update);
app.use((req, res) => res.status(404).json({ app: 'express', handler: null }));
app.use((err, req, res, next) => res.status(400).json({ app: 'express', handler: null, error: String(err.type) }));

app.listen(Number(process.argv[2]), '127.0.0.1');
