const express = require('express');

const app = express();
app.use(express.json());

app.get('/', (req, res) => res.type('text').send('hello from express\n'));
app.get('/env', (req, res) => res.json({ url: req.originalUrl, env: app.get('env'), ip: req.ip }));
app.post('/json', (req, res) => res.json({ got: req.body }));

module.exports = app;
