"""Replies written for CareLens from the EPITOME mechanism definitions, each with its levels: the empathy starter's seed examples."""
from __future__ import annotations

import pandas as pd

from carelens.data.contracts import MECHANISMS

#: (reply, emotional reactions, interpretations, explorations), each level 0 none / 1 weak / 2 strong, as Sharma et
#: al. (2020) define them: a reaction is weak when it alludes to a feeling ("everything will be fine") and strong when
#: it names one ("I feel so sad for you"); an interpretation is weak when generic ("I understand") and strong when it
#: names the feeling or experience inferred, or shares a similar one; an exploration is weak when generic ("what
#: happened?") and strong when it asks about the person's own feelings or situation.
PROTOTYPES = (
    ("I'm so sorry you're going through this, that sounds really awful.", 2, 2, 0),
    ("I'm really sorry to hear that.", 2, 0, 0),
    ("Oh no, I feel terrible that this happened to you.", 2, 0, 0),
    ("I'm so sad to read this. Sending you a big hug.", 2, 0, 0),
    ("I'm really happy for you, that's wonderful news!", 2, 0, 0),
    ("That's heartbreaking, I'm so sorry for your loss.", 2, 0, 0),
    ("I'm genuinely worried about you right now.", 2, 0, 0),
    ("I'm so proud of you for reaching out.", 2, 0, 0),
    ("My heart goes out to you and your family.", 2, 0, 0),
    ("Ugh, I'm sorry, that's so frustrating.", 2, 0, 0),
    ("I'm sorry about the trouble with your order.", 1, 0, 0),
    ("Sorry for the wait.", 1, 0, 0),
    ("Hang in there, things will get better.", 1, 0, 0),
    ("Everything will be okay, you've got this.", 1, 0, 0),
    ("Good luck, I hope it works out for you.", 1, 0, 0),
    ("Take care of yourself.", 1, 0, 0),
    ("Stay strong, you're not alone in this.", 1, 0, 0),
    ("Thank you for sharing this with me.", 1, 0, 0),
    ("I hope you have a better day tomorrow.", 1, 0, 0),
    ("Glad we could sort that out for you.", 1, 0, 0),
    ("I understand.", 0, 1, 0),
    ("I understand how you feel.", 0, 1, 0),
    ("I get it, that makes sense.", 0, 1, 0),
    ("I hear you.", 0, 1, 0),
    ("I know what you mean.", 0, 1, 0),
    ("That's understandable.", 0, 1, 0),
    ("It must be so frustrating to have your internet drop every evening when you're trying to work.", 0, 2, 0),
    ("That must have been really scary for you, being stuck at the airport with no information.", 0, 2, 0),
    ("It sounds like you feel let down because nobody called you back as promised.", 0, 2, 0),
    ("You must be exhausted after spending the whole morning on hold.", 0, 2, 0),
    ("I've been through something similar and I know how lonely it can feel.", 0, 2, 0),
    ("I had the same thing happen to me last year, it took weeks to get my money back.", 0, 2, 0),
    ("When I was in your position I felt completely overwhelmed too.", 0, 2, 0),
    ("Me too, I struggled with anxiety for years and it was really hard.", 0, 2, 0),
    ("It seems like the hardest part is not knowing when it will be fixed.", 0, 2, 0),
    ("I can see why you're upset: you were charged twice and nobody explained why.", 0, 2, 0),
    ("I can imagine how stressful it is to move house without a working phone line.", 0, 2, 0),
    ("What happened?", 0, 0, 1),
    ("Can you tell me more?", 0, 0, 1),
    ("What do you mean?", 0, 0, 1),
    ("Could you give me your account number?", 0, 0, 1),
    ("Is there anything else I can help with?", 0, 0, 1),
    ("What's going on?", 0, 0, 1),
    ("How are you feeling about all of this right now?", 0, 0, 2),
    ("What has been the hardest part for you?", 0, 0, 2),
    ("Are you feeling alone with this at the moment?", 0, 0, 2),
    ("How has this affected you day to day?", 0, 0, 2),
    ("What do you think made you feel that way?", 0, 0, 2),
    ("Have you been able to talk to anyone about how you feel?", 0, 0, 2),
    ("Do you want to tell me what happened when you called last time?", 0, 0, 2),
    ("Is it the waiting or the lack of updates that bothers you most?", 0, 0, 2),
    ("I'm so sorry, that sounds exhausting. How are you holding up?", 2, 2, 2),
    ("I'm really sorry. I understand how frustrating it must be to lose your settings again. What happened this time?",
     2, 2, 1),
    ("Oh no, I'm sorry. It must be stressful to be without heating. How are you managing at home?", 2, 2, 2),
    ("I'm sorry to hear that. Can you tell me more about what happened?", 2, 0, 2),
    ("I understand. Could you tell me when it started?", 0, 1, 1),
    ("I've felt that way too and it does get easier. What's been on your mind lately?", 0, 2, 2),
    ("Sorry about that. I understand. Is there anything else?", 1, 1, 1),
    ("Your refund has been processed and should arrive in three to five working days.", 0, 0, 0),
    ("I've reset your router remotely, please restart it now.", 0, 0, 0),
    ("The engineer will arrive between 8 and 12 on Tuesday.", 0, 0, 0),
    ("Please update the app to the latest version and log in again.", 0, 0, 0),
    ("Your account number is on the top right of your bill.", 0, 0, 0),
    ("Thanks for calling, my name is Sam.", 0, 0, 0),
    ("Just try going for a walk every day, it helps a lot.", 0, 0, 0),
    ("You should see a doctor about that.", 0, 0, 0),
    ("Read the terms and conditions, it's all in there.", 0, 0, 0),
    ("That's our policy, there's nothing I can do.", 0, 0, 0),
    ("Lol same.", 0, 1, 0),
    ("Just ignore them and move on.", 0, 0, 0),
)


def prototype_table() -> pd.DataFrame:
    """The prototypes as an empathy training table: `context` (empty), `response` and a level per mechanism."""
    frame = pd.DataFrame(PROTOTYPES, columns=["response", *MECHANISMS])
    frame.insert(0, "context", "")
    return frame.astype({m: "Int64" for m in MECHANISMS})
